"""Failure paths of the registry and the dispatcher on the real servers: the janitor's guard, a shard
stream broken and reopened, records lost to a shard counted dead, records without a usable key.
(The shard's edge is in test_failure_paths_shard.py, a broker restart in test_failure_paths_kafka.py.)"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
import uuid

import pytest
import redis
from kafka import KafkaProducer

from common.registry import Registry, ShardInfo
from tests.integration.helpers import WsClient, committed_equals_end, produce, producer, registry, wait_for

pytestmark = pytest.mark.integration


# -- 1. the janitor's `only_if_dead` guard (Lua, real Redis) -------------------------------------

def _confirmed_subscription(reg: Registry) -> redis.client.PubSub:
    ps = reg.r.pubsub()
    ps.subscribe(reg.channel)
    wait_for(lambda: (m := ps.get_message(timeout=0.1)) and m["type"] == "subscribe", what="SUBSCRIBE")
    return ps


def _published_until_marker(reg: Registry, ps: redis.client.PubSub) -> list[dict]:
    """Every change-feed message up to a marker published now: 'nothing else was published'."""
    reg.r.publish(reg.channel, b'{"op":"marker"}')
    got: list[dict] = []
    while not got or got[-1] != {"op": "marker"}:
        msg = ps.get_message(timeout=5)
        assert msg is not None, f"marker never arrived after {got}"
        if msg["type"] == "message":
            got.append(json.loads(msg["data"]))
    return got[:-1]


def test_janitor_spares_a_live_shard_and_cleans_one_whose_liveness_key_expired(redis_server):
    """forget() on a heartbeating shard returns False and changes and publishes nothing; once its key
    has expired it removes exactly its routes, token set and membership, and publishes one reset."""
    reg = Registry(redis.Redis.from_url(redis_server.url), f"fp{uuid.uuid4().hex[:10]}")
    a = ShardInfo("A", "127.0.0.1:1", "ws://a", 1, 1, 0, 2, 100, 400)
    b = ShardInfo("B", "127.0.0.1:2", "ws://b", 1, 1, 0, 1, 1000, 60_000)
    assert reg.heartbeat(a, 60_000) is False and reg.heartbeat(b, 60_000) is False  # new keys
    reg.apply_routes("A", ["T1", "T2"], [])
    reg.apply_routes("B", ["T1"], [])
    ps = _confirmed_subscription(reg)

    assert reg.forget("A") is False  # alive: the guard refuses
    assert (reg.route_of("T1"), reg.route_of("T2"), reg.registered_tokens("A")) == (
        {"A", "B"}, {"A"}, {"T1", "T2"})
    assert reg.r.sismember(reg.shards_key(), "A") and _published_until_marker(reg, ps) == []

    assert reg.heartbeat(a, 300) is True  # its last heartbeat, with a short TTL; then it goes silent
    wait_for(lambda: not reg.r.exists(reg.shard_key("A")), what="A's liveness key to expire")
    assert reg.forget("A") is True
    assert (reg.route_of("T1"), reg.route_of("T2")) == ({"B"}, set())
    assert not reg.r.exists(reg.tokens_key("A"), reg.route_key("T2"))
    assert not reg.r.sismember(reg.shards_key(), "A") and reg.r.sismember(reg.shards_key(), "B")
    assert reg.registered_tokens("B") == {"T1"} and reg.r.exists(reg.shard_key("B"))
    assert _published_until_marker(reg, ps) == [{"op": "reset", "shard": "A"}]
    ps.close()


def test_dispatcher_janitor_removes_a_killed_shards_routes_after_the_grace(stack):
    """A SIGKILLed shard's routes outlive it only for --janitor-grace-s: then the dispatcher's janitor
    removes them from Redis, and the live shard's routes stay."""
    hb = ("--heartbeat-s", "0.5", "--heartbeat-ttl-s", "1.5")
    a, b = stack.shard("A", *hb), stack.shard("B", *hb)
    d = stack.dispatcher("targeted", "--janitor-grace-s", "1")
    reg = registry(stack)
    ca, cb = WsClient(a.ws_url), WsClient(b.ws_url)  # held: a collected client would unsubscribe
    ca.subscribe("J1", "J2")
    cb.subscribe("J1")
    assert (reg.route_of("J1"), reg.route_of("J2")) == ({"A", "B"}, {"A"})
    os.kill(a.proc.pid, signal.SIGKILL)
    wait_for(lambda: reg.route_of("J1") == {"B"} and not reg.r.exists(reg.route_key("J2")), timeout_s=20,
             what="the janitor's clean-up")
    assert not reg.r.exists(reg.tokens_key("A")) and not reg.r.sismember(reg.shards_key(), "A")
    assert reg.registered_tokens("B") == {"J1"} and d.route("J1") == ["B"] and d.route("J2") == []
    assert cb.request({"op": "ping"})["type"] == "pong"


# -- 2. a stream broken under a paused shard, reopened, its unacked batch resent ------------------

def test_stream_broken_by_keepalive_is_reopened_and_its_unacked_batch_resent_once(stack):
    """A shard paused past the keepalive timeout (still registered) breaks its stream with one record
    unacked: the sender counts 1 failure, reconnects once the shard resumes (2 connects), resends that
    record once (records_resent 1, sent 3 in all), and the client gets each tick exactly once."""
    a = stack.shard("A", "--ingest-window", "1", "--heartbeat-ttl-s", "60",
                    "--grpc-min-ping-interval-s", "0.5")
    d = stack.dispatcher("targeted", "--grpc-keepalive-s", "1", "--grpc-keepalive-timeout-s", "1",
                         "--stream-ping-s", "60", "--backoff-cap-s", "0.5")
    client = WsClient(a.ws_url)
    client.subscribe("KA")
    st = lambda: d.stats()["shards"]["A"]  # noqa: E731
    wait_for(lambda: st()["state"] == "ready", what="stream ready")
    assert (st()["connects"], st()["stream_failures"]) == (1, 0)
    p = producer(stack.kafka.bootstrap)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        produce(p, stack.c.topic, [("KA", b'{"s":1}')])
        wait_for(lambda: st()["in_flight_records"] == 1, what="the record sent, unacked")
        wait_for(lambda: st()["stream_failures"] == 1, timeout_s=30, what="keepalive to break the stream")
        assert st()["records_resent"] == 1  # put back for the next stream
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    wait_for(lambda: (s := st())["connects"] == 2 and s["queue_depth"] == 0 and s["in_flight_records"] == 0,
             timeout_s=30, what="reconnected and the resent record acked")
    produce(p, stack.c.topic, [("KA", b'{"s":2}')])
    assert [json.loads(f)["data"] for f in client.ticks(2)] == [{"s": 1}, {"s": 2}]
    s = st()
    assert (s["stream_failures"], s["connects"], s["records_resent"], s["records_sent"]) == (1, 2, 1, 3)
    assert (s["records_dropped"], d.stats()["dropped_for_gone_shards"]) == (0, 0)
    sa = a.stats()
    # The paused shard may still have read the broken stream's copy on resuming: then the resent one
    # is the duplicate its position check dropped. Either way the client got it once.
    assert sa["frames_queued"] == 2 and sa["records_received"] == 2 + sa["duplicates_dropped"]
    assert sa["duplicates_dropped"] in (0, 1)


# -- 3. dropped_gone: records queued for a shard the registry counts dead -------------------------

def test_records_queued_for_a_shard_counted_dead_are_counted_dropped_gone_exactly(stack):
    """A paused shard holds 1 record unacked and 9 queued when its liveness key expires: its stream
    is stopped and all 10 are counted dropped_gone; the next record is unrouted, not dropped. When the
    same process resumes, its client gets the token's latest value as one resync, then live ticks."""
    a = stack.shard("A", "--ingest-window", "1", "--heartbeat-ttl-s", "60")
    d = stack.dispatcher("targeted", "--stream-ping-s", "60", "--stream-liveness-s", "1")
    client = WsClient(a.ws_url)
    client.subscribe("DG")
    reg = registry(stack)
    st = lambda: d.stats()["shards"]["A"]  # noqa: E731
    p = producer(stack.kafka.bootstrap)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        produce(p, stack.c.topic, [("DG", b'{"s":0}')])
        wait_for(lambda: st()["in_flight_records"] == 1, what="one record in flight")
        produce(p, stack.c.topic, [("DG", b'{"s":%d}' % i) for i in range(1, 10)])
        wait_for(lambda: st()["records_offered"] == 10 and st()["queue_depth"] == 9, what="9 queued")
        reg.r.pexpire(reg.shard_key("A"), 1)  # its TTL runs out now instead of in a minute
        wait_for(lambda: "A" not in d.stats()["routable_shards"], what="A counted dead")
        stats = d.stats()
        assert stats["dropped_for_gone_shards"] == 10 and "A" not in stats["shards"]
        assert _metric(d.http_port, "shardcast_dispatcher_records_dropped_gone_total") == 10
        produce(p, stack.c.topic, [("DG", b'{"s":10}')])
        wait_for(lambda: d.stats()["records_unrouted"] == 1, what="the next record unrouted")
        assert d.stats()["dropped_for_gone_shards"] == 10
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    frames = []
    while not (frames and frames[-1].get("resync")):
        frames.append(json.loads(client.data_frames(1, timeout_s=30)[0]))
    resync = frames.pop()
    assert (resync["type"], resync["data"]) == ("snapshot", {"s": 10})
    # The stopped stream's one batch may have reached the shard as it resumed: s=0 at most.
    assert [(f["type"], f["data"]) for f in frames] in ([], [("tick", {"s": 0})])
    assert d.stats()["shards_resynced_on_return"] == 1 and st()["resyncs_sent"] == 1
    produce(p, stack.c.topic, [("DG", b'{"s":11}')])
    assert json.loads(client.data_frames(1)[0])["data"] == {"s": 11}  # nothing stale in between


def _metric(port: int, sample: str) -> float:
    """One sample's value from a process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample}")


# -- 4. keyless and invalid keys ---------------------------------------------------------------

def test_records_without_a_usable_key_are_counted_skipped_and_committed(stack):
    """Keyless, empty, non-token, too-long and non-ASCII keys: 5 counted invalid and skipped, the 3
    good records delivered (a null value as an empty payload), every offset committed — a restarted
    dispatcher replays none of them."""
    a = stack.shard("A")
    d = stack.dispatcher()
    client = WsClient(a.ws_url)
    client.subscribe("KEYED")
    p = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap, acks=1)
    p.send(stack.c.topic, key=b"KEYED", value=b'{"s":1}')
    for key in (None, b"", b"bad key!", b"x" * 65, b"\xff\xfe"):
        p.send(stack.c.topic, key=key, value=b'{"bad":true}')
    p.send(stack.c.topic, key=b"KEYED", value=b'{"s":2}')
    p.send(stack.c.topic, key=b"KEYED", value=None)
    p.flush(30)
    frames = [json.loads(f) for f in client.ticks(3)]
    assert [f.get("data", f.get("data_b64")) for f in frames] == [{"s": 1}, {"s": 2}, ""]
    wait_for(lambda: d.stats()["records_invalid"] == 5, what="invalid records counted")
    s = d.stats()
    assert (s["records_consumed"], s["records_routed"], s["records_unrouted"]) == (3, 3, 0)
    assert s["last_values"] == 1
    assert d.healthy()
    group = f"g-{stack.c.namespace}"
    wait_for(lambda: committed_equals_end(stack.kafka.bootstrap, group, stack.c.topic), timeout_s=20,
             interval_s=0.3, what="every offset committed, the invalid records' too")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    d2 = stack.dispatcher(dispatcher_id="d2")
    p.send(stack.c.topic, key=b"KEYED", value=b'{"s":3}')
    p.flush(30)
    assert json.loads(client.ticks(1)[0])["data"] == {"s": 3}
    s2 = d2.stats()
    assert (s2["records_consumed"], s2["records_invalid"]) == (1, 0)  # nothing replayed
    p.close()
