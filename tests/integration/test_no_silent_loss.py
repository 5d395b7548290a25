"""Faults on the real servers while ticks flow: nothing lost, nothing twice, or the client is told."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from devstack.redis_server import RedisServer
from tests.integration.helpers import (
    GAP_DISPATCHER_FLAGS,
    GAP_NEW,
    GAP_OLD,
    GAP_SHARD_FLAGS,
    WsClient,
    overflow_while_frozen,
    producer,
    wait_for,
)
from tests.integration.seqcheck import TickFeed, Watcher

pytestmark = pytest.mark.integration
TOKENS = [f"NL-{i}" for i in range(6)]  # spread over the topic's 3 partitions


def _settle(feed: TickFeed, watchers: list[Watcher], timeout_s: float = 30) -> float:
    """Stop the feed; wait until every client holds every token's final value; seconds it took."""
    final = feed.stop()
    _, took = wait_for(lambda: all(w.holds(final) for w in watchers), timeout_s=timeout_s,
                       what="every client on the final values")
    return took


def _clean(w: Watcher) -> dict[str, int]:
    t = w.totals()
    assert t["duplicates"] == 0 and t["silent_gaps"] == 0, t
    assert w.close_code is None and not w.error, (w.close_code, w.error)
    return t


def _kill_streams_to(port: int) -> None:
    """Abort every TCP connection to a shard's gRPC port (what a keepalive reset does)."""
    out = subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"ss -K unavailable: {out.stderr.strip()}")


def test_broken_streams_lose_nothing_and_deliver_nothing_twice(stack):
    """Streams aborted mid-flow are reopened; unacked batches are resent and deduplicated by position."""
    a = stack.shard("A")
    d = stack.dispatcher()
    w = Watcher(a.ws_url, TOKENS)
    feed = TickFeed(stack.kafka.bootstrap, stack.c.topic, TOKENS, 600).start()
    for n in range(1, 4):
        wait_for(lambda n=n: w.totals()["ticks"] > 200 * n, timeout_s=30, what="ticks flowing")
        connects = d.stats()["shards"]["A"]["connects"]
        _kill_streams_to(a.grpc_port)
        wait_for(lambda c=connects: d.stats()["shards"]["A"]["connects"] > c, what="stream reopened")
    _settle(feed, [w])
    t = _clean(w)
    assert t["resyncs"] == 0  # nothing had to be dropped: every tick arrived as a tick
    st = d.stats()["shards"]["A"]
    assert st["stream_failures"] >= 3 and st["records_dropped"] == 0


def test_keepalive_pings_within_the_shard_policy_never_reset_streams(stack):
    """Shards permit the dispatcher's keepalive period; one left at gRPC's default 5 min resets."""
    stack.shard("A", "--grpc-min-ping-interval-s", "0.5")  # half the period: jitter tolerated
    stack.shard("B", "--grpc-min-ping-interval-s", "300")
    d = stack.dispatcher("targeted", "--grpc-keepalive-s", "1", "--grpc-keepalive-timeout-s", "5",
                         "--stream-ping-s", "60")  # no data on the streams: pings alone
    wait_for(lambda: d.stats()["shards"]["B"]["stream_failures"] >= 1, timeout_s=30,
             what="B's stream reset by GOAWAY too_many_pings (the control)")
    st = d.stats()["shards"]["A"]
    assert st["stream_failures"] == 0 and st["connects"] == 1


def test_redis_restarted_empty_is_not_a_shard_death(stack, workdir):
    """Redis killed and restarted empty: streams stay up, clients lose nothing and see nothing twice."""
    own = RedisServer(workdir / f"redis-{stack.c.namespace}").start()  # a free port, kept on restart
    stack.c.redis_url = own.url
    try:
        hb = ("--heartbeat-s", "0.5", "--heartbeat-ttl-s", "2")
        a, b = stack.shard("A", *hb), stack.shard("B", *hb)
        d = stack.dispatcher()
        wa, wb = Watcher(a.ws_url, TOKENS[:4]), Watcher(b.ws_url, TOKENS[2:])
        feed = TickFeed(stack.kafka.bootstrap, stack.c.topic, TOKENS, 600).start()
        wait_for(lambda: wa.totals()["ticks"] > 100, what="ticks flowing")
        own.proc.kill()
        own.proc.wait()
        wait_for(lambda: not d.stats()["registry_healthy"], what="dispatcher saw Redis go")
        # The outage lasts until both shards' clients got 200 more ticks: they flow by broadcast.
        seen = wa.totals()["ticks"], wb.totals()["ticks"]
        wait_for(lambda: wa.totals()["ticks"] > seen[0] + 200 and wb.totals()["ticks"] > seen[1] + 200,
                 timeout_s=30, what="ticks flowing during the outage")
        assert d.stats()["fallback_batches"] > 0
        own.start()  # same port, no data
        wait_for(lambda: d.stats()["routes_trusted"] and d.route(TOKENS[0]) == ["A"], timeout_s=20,
                 what="targeted routing restored")
        _settle(feed, [wa, wb])
    finally:
        own.stop()
    for w in (wa, wb):
        assert _clean(w)["resyncs"] == 0
    for sid in ("A", "B"):
        st = d.stats()["shards"][sid]
        assert st["connects"] == 1 and st["records_dropped"] == 0  # never counted dead


def test_paused_shard_clients_are_resynced_not_left_stale(stack):
    """A shard paused past its TTL is counted dead; when it resumes its clients get the latest values
    marked resync (never a silent gap), while clients of other shards notice nothing."""
    hb = ("--heartbeat-s", "0.5", "--heartbeat-ttl-s", "2")
    a, b = stack.shard("A", *hb), stack.shard("B", *hb)
    d = stack.dispatcher("targeted", "--stream-liveness-s", "1")
    d2 = stack.dispatcher("targeted", "--stream-liveness-s", "1", dispatcher_id="d2")  # half each
    wa, wb = Watcher(a.ws_url, TOKENS), Watcher(b.ws_url, TOKENS)
    feed = TickFeed(stack.kafka.bootstrap, stack.c.topic, TOKENS, 300).start()
    wait_for(lambda: wa.totals()["ticks"] > 100 and d2.stats()["assigned_partitions"],
             what="ticks flowing from both dispatchers")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "A" not in d.stats()["routable_shards"] + d2.stats()["routable_shards"],
                 timeout_s=30, what="A counted dead")
        seen = wb.totals()["ticks"]  # ticks A's clients miss: B's clients get 300 of them meanwhile
        wait_for(lambda: wb.totals()["ticks"] > seen + 300, timeout_s=30, what="ticks while A is dead")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: all(s.resyncs for s in wa.seen.values()), timeout_s=15, what="A's clients resynced")
    print(f"\nresynced {time.monotonic() - resumed:.2f}s after SIGCONT")
    _settle(feed, [wa, wb])
    assert _clean(wa)["resyncs"] >= len(TOKENS)  # no 4010: each dispatcher resyncs its own tokens
    assert _clean(wb)["resyncs"] == 0
    assert d.stats()["shards_resynced_on_return"] == d2.stats()["shards_resynced_on_return"] == 1


def test_dispatcher_failover_replays_without_duplicates(stack):
    """One of two dispatchers SIGKILLed: its partitions resume on the other; replayed records are
    dropped by position, so clients see every tick exactly once."""
    a = stack.shard("A")
    d1 = stack.dispatcher(dispatcher_id="d1")
    d2 = stack.dispatcher(dispatcher_id="d2")
    w = Watcher(a.ws_url, TOKENS)
    feed = TickFeed(stack.kafka.bootstrap, stack.c.topic, TOKENS, 300).start()
    wait_for(lambda: d1.stats()["records_consumed"] > 50 and d2.stats()["records_consumed"] > 50,
             timeout_s=30, what="both dispatchers consuming")
    survivor = set(wait_for(lambda: d2.stats()["assigned_partitions"], what="d2's partitions")[0])
    w.reset_pauses()
    os.kill(d1.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    before = {t: s.last for t, s in w.seen.items()}
    wait_for(lambda: all(w.seen[t].last > before[t] + 10 for t in TOKENS), timeout_s=30,
             interval_s=0.05, what="every token flowing again")
    moved_s = time.monotonic() - killed
    own = max(s.max_pause_s for s in w.seen.values() if s.partition in survivor)
    print(f"\nall partitions flowing {moved_s:.2f}s after SIGKILL; the survivor's own partitions "
          f"{sorted(survivor)} paused at most {own:.2f}s")
    _settle(feed, [w])
    assert _clean(w)["resyncs"] == 0


def test_dropped_records_with_no_value_to_resync_close_their_clients_4010(stack):
    """Records dropped for a frozen shard: a token whose latest value the dispatcher still has is
    resynced; one it has forgotten (--last-values-max 1) gets a gap marker, and its subscribers 4010."""
    a = stack.shard("A", *GAP_SHARD_FLAGS)
    d = stack.dispatcher("targeted", *GAP_DISPATCHER_FLAGS)
    old, new = GAP_OLD, GAP_NEW
    clients = {t: WsClient(a.ws_url) for t in (old, new)}
    for token, client in clients.items():
        client.subscribe(token)
    overflow_while_frozen(a, d, producer(stack.kafka.bootstrap), stack.c.topic)
    outcomes = {t: _until_resync_or_close(c) for t, c in clients.items()}
    # The one-entry last-value map holds `new` (consumed last): `old` has no value to resync with.
    assert outcomes == {old: ("closed with 4010", 0), new: ("resync", 999)}, outcomes
    st = d.stats()["shards"]["A"]
    assert st["gaps_sent"] == 1 and st["resyncs_sent"] == 1
    wait_for(lambda: a.stats()["gaps_closed"] == 1, what="the shard counted the close")


def _until_resync_or_close(client: WsClient) -> tuple[str, int]:
    """Read ticks until a resync snapshot (its value) or a close frame (its code)."""
    while True:
        try:
            doc = json.loads(client.data_frames(1, timeout_s=30)[0])
        except AssertionError as exc:  # data_frames reports a close frame this way
            return " ".join(str(exc).split()[:3]), 0
        if doc.get("resync"):
            return "resync", doc["data"]["s"]
