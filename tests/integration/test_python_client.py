"""The Python client (clients/python, `shardcast_client`) against real shards, dispatchers, Kafka, Redis.

Each behaviour is proven for the thread-based `Client` and the asyncio
`AsyncClient` alike: both are driven through `Harness`, which runs the
asyncio client on a loop in a thread of its own so a test reads the same way
for either. Randomness is injected (`rand`), so the first URL and every
backoff delay are exact.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest
from shardcast_client import (
    SUBPROTOCOL,
    AsyncClient,
    AuthFailedError,
    AuthFailedEvent,
    Client,
    ClientConfig,
    DuplicateEvent,
    GapEvent,
    Update,
)
from websockets.frames import Opcode

from devstack.procs import ROOT
from shard.token import issue
from tests.integration.admin_client import Admin
from tests.integration.helpers import (
    GAP_DISPATCHER_FLAGS,
    GAP_NEW,
    GAP_OLD,
    GAP_SHARD_FLAGS,
    overflow_while_frozen,
    produce,
    producer,
    wait_for,
)

pytestmark = pytest.mark.integration
APIS = ["sync", "async"]
SECRET = secrets.token_urlsafe(32)


def _first_then(first: float, rest: float):
    """A `rand` whose first draw (the first URL) is `first`, every later one `rest`."""
    draws = iter([first])
    return lambda: next(draws, rest)


class Harness:
    """One client of either API, seen the same way: events recorded, updates collected in order."""

    def __init__(self, api: str, urls, **kw) -> None:
        self.api = api
        self.events: list[tuple[str, object]] = []
        self.updates: list[Update] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        if api == "sync":
            self.client = Client(urls, **kw)
            self._thread = threading.Thread(target=self._read_sync, daemon=True)
        else:
            self.loop = asyncio.new_event_loop()
            self.client = AsyncClient(urls, **kw)
            self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.reader = asyncio.run_coroutine_threadsafe(self._read_async(), self.loop)
        for name in ("state", "gap", "error", "unsubscribed", "auth_failed", "duplicate"):
            self.client.on(name, lambda e, n=name: self._record(n, e))
        self._thread.start()

    def _record(self, name: str, event: object) -> None:
        with self._lock:
            self.events.append((name, event))

    def _read_sync(self) -> None:
        try:
            with self.client as c:
                for u in c.updates():
                    self.updates.append(u)
        except BaseException as exc:
            self.error = exc

    async def _read_async(self) -> None:
        try:
            async with self.client as c:
                async for u in c:
                    self.updates.append(u)
        except BaseException as exc:
            self.error = exc

    def call(self, fn, *args):
        """Call a client method on the thread that owns it (the loop, for the asyncio client)."""
        if self.api == "sync":
            return fn(*args)
        done = threading.Event()
        out = []
        self.loop.call_soon_threadsafe(lambda: (out.append(fn(*args)), done.set()))
        assert done.wait(10)
        return out[0]

    def subscribe(self, *tokens: str) -> None:
        self.call(self.client.subscribe, list(tokens))

    def of(self, name: str) -> list:
        with self._lock:
            return [e for n, e in self.events if n == name]

    def states(self, state: str) -> list:
        return [e for e in self.of("state") if e.state == state]

    def data(self, token: str | None = None) -> list:
        return [u.data for u in self.updates if token is None or u.token == token]

    def wait_updates(self, n: int, token: str | None = None, timeout_s: float = 30) -> None:
        wait_for(lambda: len(self.data(token)) >= n or self.error, timeout_s=timeout_s,
                 what=f"{n} updates of {token or 'any token'}")
        assert self.error is None, self.error

    def wait_connected(self, n: int = 1, timeout_s: float = 30) -> None:
        wait_for(lambda: len(self.states("connected")) >= n, timeout_s=timeout_s, what=f"connected x{n}")

    def stats(self):
        return self.call(lambda: self.client.stats)

    def close(self) -> None:
        if self.api == "sync":
            self.client.close()
        else:
            asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result(15)
            self.reader.result(15)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)
        assert not self._thread.is_alive()


@pytest.fixture
def harnesses():
    made: list[Harness] = []

    def make(api: str, urls, **kw) -> Harness:
        h = Harness(api, urls, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def _ticks(token: str, values: range) -> list[tuple[str, bytes]]:
    return [(token, json.dumps({"i": i}).encode()) for i in values]


class Wire(logging.Handler):
    """The protocol frames one client's websockets connection sent and received (its debug log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.frames: list[tuple[str, dict]] = []
        self.logger = logging.getLogger(f"test.wire.{secrets.token_hex(4)}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        frame = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if record.msg in ("> %s", "< %s") and getattr(frame, "opcode", None) is Opcode.TEXT:
            self.frames.append((record.msg[0], json.loads(bytes(frame.data))))

    def of(self, direction: str, **match) -> list[dict]:
        """Frames sent (">") or received ("<") whose fields equal `match`."""
        return [f for d, f in list(self.frames)
                if d == direction and all(f.get(k) == v for k, v in match.items())]


def _consumed(d, n: int) -> None:
    wait_for(lambda: d.stats()["records_consumed"] >= n, timeout_s=30, what=f"{n} records consumed")


@pytest.mark.parametrize("api", APIS)
def test_snapshot_on_subscribe_then_ticks_in_order_with_positions(stack, harnesses, api):
    """A subscriber first gets the token's last value as a snapshot, then every tick in order,
    each with its Kafka position; the upgrade negotiated the shardcast.v1 subprotocol."""
    a = stack.shard("A")
    d = stack.dispatcher()
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("PY-1", range(5)))
    _consumed(d, 5)
    h = harnesses(api, [a.ws_url], tokens=["PY-1"])
    h.wait_connected()
    h.wait_updates(1)
    produce(feed, stack.c.topic, _ticks("PY-1", range(5, 25)))
    h.wait_updates(21)
    expected = [("snapshot", 4)] + [("tick", i) for i in range(5, 25)]
    assert [(u.kind, u.data["i"]) for u in h.updates] == expected
    assert len({u.partition for u in h.updates}) == 1
    assert [u.offset for u in h.updates] == list(range(4, 25))  # the only token of its partition
    assert all(u.ts > 0 and u.received_at >= u.ts for u in h.updates)
    [connected] = h.states("connected")
    assert (connected.url, connected.subprotocol) == (a.ws_url, SUBPROTOCOL)
    assert h.call(h.client.last, "PY-1") == h.updates[-1]
    s = h.stats()
    assert (s.updates, s.duplicates, s.reconnects, s.gaps) == (21, 0, 0, 0)


@pytest.mark.parametrize("how", ["drain", "sigterm"])
@pytest.mark.parametrize("api", APIS)
def test_drained_or_stopped_shard_moves_the_client_to_the_other_url_at_once(stack, harnesses, api, how):
    """1012 (admin DrainShard) or 1001 (SIGTERM): the client reconnects to the other URL with no
    delay, resubscribes, and the snapshot of the value it already holds is dropped, not surfaced."""
    a, b = stack.shard("A"), stack.shard("B")
    d = stack.dispatcher()
    h = harnesses(api, [a.ws_url, b.ws_url], tokens=["FO-1"], rand=_first_then(0.0, 0.5))
    h.wait_connected()
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("FO-1", range(10)))
    h.wait_updates(10)
    if how == "drain":
        assert Admin(d.admin_target).drain("A", 0.5)[-1].closed == 1
    else:
        a.proc.terminate()
    wait_for(lambda: h.of("duplicate"), timeout_s=30, what="B's snapshot of the held value")
    produce(feed, stack.c.topic, _ticks("FO-1", range(10, 20)))
    h.wait_updates(20)
    assert [(u.kind, u.data["i"]) for u in h.updates] == [("tick", i) for i in range(20)]
    [moved] = h.states("reconnecting")
    code = 1012 if how == "drain" else 1001
    assert (moved.url, moved.code, moved.delay_ms) == (b.ws_url, code, 0)
    assert [c.url for c in h.states("connected")] == [a.ws_url, b.ws_url]
    held = h.updates[9]
    assert h.of("duplicate") == [DuplicateEvent("FO-1", held.partition, held.offset)]
    s = h.stats()
    assert (s.updates, s.duplicates, s.reconnects, s.gaps) == (20, 1, 1, 0)


@pytest.mark.parametrize("api", APIS)
def test_killed_shard_backs_off_then_moves_to_another_url(stack, harnesses, api):
    """SIGKILL (no close frame, 1006): the client waits a jittered backoff delay (exact with the
    injected random: 0.5 x 0.25 s), reconnects to the other URL, resubscribes; no duplicate surfaces."""
    a, b = stack.shard("A"), stack.shard("B")
    stack.dispatcher()
    h = harnesses(api, [a.ws_url, b.ws_url], tokens=["KL-1"], rand=_first_then(0.0, 0.5))
    h.wait_connected()
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("KL-1", range(5)))
    h.wait_updates(5)
    os.kill(a.proc.pid, signal.SIGKILL)
    h.wait_connected(2)
    produce(feed, stack.c.topic, _ticks("KL-1", range(5, 10)))
    h.wait_updates(10)
    assert [u.data["i"] for u in h.updates] == list(range(10))
    [moved] = h.states("reconnecting")
    assert (moved.url, moved.code, moved.delay_ms, moved.attempt) == (b.ws_url, 1006, 125, 1)
    assert h.states("connected")[1].url == b.ws_url
    s = h.stats()
    assert (s.updates, s.reconnects) == (10, 1)


def _jwt_shard(stack, shard_id: str = "A", *flags: str):
    stack.c.env["SHARDCAST_JWT_SECRET"] = SECRET
    return stack.shard(shard_id, "--auth", "jwt", *flags)


def _jwt(grant: list[str], ttl_s: float = 600, key: bytes | None = None) -> str:
    return issue(key or SECRET.encode(), grant, ttl_s)


@pytest.mark.parametrize("api", APIS)
def test_token_goes_in_the_first_message_and_forbidden_tokens_are_dropped(stack, harnesses, api):
    """With a token the client authenticates by message (its URL carries none), then subscribes; a
    token outside the grant comes back as a `forbidden` error and leaves the desired set."""
    a = _jwt_shard(stack)
    stack.dispatcher()
    h = harnesses(api, [a.ws_url], token=_jwt(["AU-*"]), tokens=["AU-1"])
    h.wait_connected()
    h.subscribe("XX-1", "AU-2")
    wait_for(lambda: h.of("error"), what="the forbidden error")
    produce(producer(stack.kafka.bootstrap), stack.c.topic, _ticks("AU-2", range(3)))
    h.wait_updates(3, "AU-2")
    [err] = h.of("error")
    assert (err.code, err.tokens) == ("forbidden", ("XX-1",))
    assert h.call(lambda: h.client.subscriptions) == ("AU-1", "AU-2")
    assert "?" not in a.ws_url and a.stats()["auth_failures"] == 0


@pytest.mark.parametrize("api", APIS)
def test_bad_token_reports_auth_failed_and_stops_for_good(stack, harnesses, api):
    """A token the shard refuses (4003): one auth_failed event, the iterator raises AuthFailedError,
    and the client never reconnects."""
    a = _jwt_shard(stack)
    h = harnesses(api, [a.ws_url], token=_jwt(["*"], key=secrets.token_bytes(32)), tokens=["BAD-1"])
    wait_for(lambda: h.error is not None, what="the iterator to raise")
    assert isinstance(h.error, AuthFailedError) and h.error.code == 4003
    assert [e.code for e in h.of("auth_failed")] == [4003]
    assert isinstance(h.of("auth_failed")[0], AuthFailedEvent)
    assert [e.state for e in h.of("state")] == ["connecting", "closed"]
    assert h.stats().reconnects == 0
    assert a.stats()["connections_total"] == 1


@pytest.mark.parametrize("api", APIS)
def test_token_hook_refreshes_and_keeps_the_connection_past_the_first_exp(stack, harnesses, api):
    """get_token (async for AsyncClient) is asked again before exp; the fresh token sent on the live
    connection keeps it open past the first token's exp: ticks still flow, no reconnect."""
    a = _jwt_shard(stack)
    stack.dispatcher()
    issued: list[str] = []

    def fresh() -> str:
        issued.append(_jwt(["RF-*"], ttl_s=4))  # refreshed at half its life on a loaded machine
        return issued[-1]

    async def afresh() -> str:
        return fresh()

    h = harnesses(api, [a.ws_url], get_token=fresh if api == "sync" else afresh, tokens=["RF-1"])
    h.wait_connected()
    first_exp = json.loads(_b64(issued[0].split(".")[1]))["exp"]
    wait_for(lambda: time.time() > first_exp + 1.5, timeout_s=15, what="the first token's exp to pass")
    produce(producer(stack.kafka.bootstrap), stack.c.topic, _ticks("RF-1", range(3)))
    h.wait_updates(3)
    assert len(issued) >= 2
    assert h.states("reconnecting") == [] and h.stats().reconnects == 0
    assert a.stats()["connections_total"] == 1


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.mark.parametrize("api", APIS)
def test_data_lost_4010_emits_gap_then_resubscribes(stack, harnesses, api):
    """Records dropped with no value left to resync (test_no_silent_loss's setup): the client of that
    token gets a `gap` event for it, reconnects and resubscribes, and later ticks flow again; the
    client of the token that still had a value gets it as a `resync` update instead."""
    a = stack.shard("A", *GAP_SHARD_FLAGS)
    d = stack.dispatcher("targeted", *GAP_DISPATCHER_FLAGS)
    old, new = GAP_OLD, GAP_NEW
    rand = _first_then(0.0, 0.5)
    h_old = harnesses(api, [a.ws_url], tokens=[old], rand=rand)
    h_new = harnesses(api, [a.ws_url], tokens=[new], rand=rand)
    h_old.wait_connected()
    h_new.wait_connected()
    feed = producer(stack.kafka.bootstrap)
    overflow_while_frozen(a, d, feed, stack.c.topic)
    wait_for(lambda: h_old.of("gap") and len(h_old.states("connected")) == 2, timeout_s=30,
             what="the gap and the resubscribe")
    assert h_old.of("gap") == [GapEvent((old,), 4010)]
    [again] = h_old.states("reconnecting")
    assert (again.code, again.delay_ms) == (4010, 125)
    produce(feed, stack.c.topic, [(old, b'{"s":1000}')])
    wait_for(lambda: h_old.data() and h_old.data()[-1] == {"s": 1000}, what="ticks after the resubscribe")
    # The record in flight when A froze, then nothing until the tick after the resubscribe.
    assert [(u.kind, u.data) for u in h_old.updates] == [("tick", {"s": -1}), ("tick", {"s": 1000})]
    h_new.wait_updates(1)
    assert [(u.kind, u.data) for u in h_new.updates] == [("resync", {"s": 999})]
    assert (h_old.stats().gaps, h_new.stats().resyncs, h_new.stats().gaps) == (1, 1, 0)


def _watch(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "devstack.watch", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})


def _feed_until_exit(stack, token: str, procs: list[subprocess.Popen]) -> None:
    """Produce a tick of `token` every 0.1 s until every watcher exited (at most 60 s)."""
    feed = producer(stack.kafka.bootstrap)
    deadline = time.monotonic() + 60
    i = 0
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        produce(feed, stack.c.topic, [(token, json.dumps({"i": i}).encode())])
        i += 1
        time.sleep(0.1)


def test_watch_cli_prints_one_line_per_update_with_a_token_from_env_or_url(stack):
    """devstack.watch takes several --url (repeated or comma-separated), a JWT from SHARDCAST_TOKEN or
    from the banner's ?token= URL, and prints --count JSON lines, one per update."""
    a, b = _jwt_shard(stack, "A"), _jwt_shard(stack, "B")
    stack.dispatcher()
    jwt_text = _jwt(["*"])
    by_env = _watch("--url", f"{a.ws_url},{b.ws_url}", "--count", "3", "WT-1",
                    env={"SHARDCAST_TOKEN": jwt_text})
    by_url = _watch("--url", f"{a.ws_url}?token={jwt_text}", "--url", b.ws_url, "--count", "2", "WT-1")
    _feed_until_exit(stack, "WT-1", [by_env, by_url])
    for proc, n in ((by_env, 3), (by_url, 2)):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        docs = [json.loads(line) for line in out.splitlines()]
        assert len(docs) == n, out
        assert {d["token"] for d in docs} == {"WT-1"} and all("i" in d["data"] for d in docs)
        offsets = [d["offset"] for d in docs]
        assert offsets == sorted(set(offsets))
        assert "state: StateEvent(state='connected'" in err


def test_watch_cli_exits_1_on_a_refused_token(stack):
    """A token the shard refuses makes devstack.watch say so and exit 1 instead of retrying forever."""
    a = _jwt_shard(stack)
    proc = _watch("--url", a.ws_url, "--token", _jwt(["*"], key=secrets.token_bytes(32)), "WT-1")
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (1, "")
    assert "authentication failed: 4003" in err


@pytest.mark.parametrize("api", APIS)
def test_quiet_connection_is_kept_alive_by_pings_the_shard_answers(stack, harnesses, api):
    """No ticks flowing: every ping_interval_s the client sends {"op":"ping"}, the real shard answers
    each with a pong of its id, and the client stays on its first connection (no reconnect)."""
    a = stack.shard("A")
    stack.dispatcher()
    wire = Wire()
    h = harnesses(api, [a.ws_url], tokens=["KA-1"], connect_options={"logger": wire.logger},
                  config=ClientConfig(ping_interval_s=0.3, pong_timeout_s=60))
    h.wait_connected()
    wait_for(lambda: len(wire.of("<", type="pong")) >= 3, timeout_s=60, what="3 pongs")
    pongs, pings = wire.of("<", type="pong"), wire.of(">", op="ping")
    assert all(set(p) == {"op", "id"} for p in pings), pings
    assert [p["id"] for p in pongs] == [p["id"] for p in pings][:len(pongs)]
    assert len(pings) - len(pongs) in (0, 1)  # at most the latest ping still in flight
    produce(producer(stack.kafka.bootstrap), stack.c.topic, _ticks("KA-1", range(1)))
    h.wait_updates(1)
    assert [e.state for e in h.of("state")] == ["connecting", "connected"]
    assert h.stats().reconnects == 0
    assert a.stats()["connections_total"] == 1


@pytest.mark.parametrize("api", APIS)
def test_frozen_shard_is_left_after_pong_timeout_for_the_other_url(stack, harnesses, api):
    """The client's shard is SIGSTOPped: its ping goes unanswered for pong_timeout_s, the client hangs
    up (4000), backs off (exact with the injected random: 125 ms), reconnects to the other URL,
    resubscribes and receives the tick produced afterwards."""
    a, b = stack.shard("A"), stack.shard("B")
    stack.dispatcher()
    wire = Wire()
    h = harnesses(api, [a.ws_url, b.ws_url], tokens=["PT-1"], rand=_first_then(0.0, 0.5),
                  connect_options={"logger": wire.logger},
                  config=ClientConfig(ping_interval_s=0.5, pong_timeout_s=3, close_timeout_s=1))
    h.wait_connected()
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("PT-1", range(1)))
    h.wait_updates(1)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        h.wait_connected(2, timeout_s=60)
        produce(feed, stack.c.topic, _ticks("PT-1", range(1, 2)))
        h.wait_updates(2, timeout_s=60)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    assert [u.data["i"] for u in h.updates] == [0, 1]
    [moved] = h.states("reconnecting")
    assert (moved.url, moved.code, moved.delay_ms, moved.attempt) == (b.ws_url, 4000, 125, 1)
    assert "after a ping" in moved.reason
    assert [c.url for c in h.states("connected")] == [a.ws_url, b.ws_url]
    answered = {p["id"] for p in wire.of("<", type="pong")}
    unanswered = [p["id"] for p in wire.of(">", op="ping") if p["id"] not in answered]
    assert len(unanswered) == 1  # the one ping A never answered
    assert h.stats().reconnects == 1


@pytest.mark.parametrize("api", APIS)
def test_4029_after_a_request_flood_backs_off_then_resubscribes(stack, harnesses, api):
    """A shard with a 5-request budget (no refill to speak of): the client made to send 25 more subscribes
    gets rate_limited, then the shard closes 4029; the client reconnects after a backoff delay
    (exact with the injected random: 125 ms, not the immediate reconnect of 1012), resubscribes."""
    a = stack.shard("A", "--requests-per-s", "0.001", "--request-burst", "5")
    stack.dispatcher()
    h = harnesses(api, [a.ws_url], tokens=["RL-1"], rand=_first_then(0.0, 0.5))
    h.wait_connected()

    def flood() -> None:
        # The subscribe at connect, then 25: 5 pass, 20 get rate_limited, the 26th request is
        # answered with 4029. No more: a request still unread when the shard hangs up makes its
        # kernel send a reset, which may overtake the close frame (then the client sees 1006).
        for i in range(25):
            h.client.subscribe([f"RL-F{i}"])

    h.call(flood)
    h.wait_connected(2, timeout_s=60)
    [moved] = h.states("reconnecting")
    assert (moved.url, moved.code, moved.delay_ms, moved.attempt) == (a.ws_url, 4029, 125, 1)
    produce(producer(stack.kafka.bootstrap), stack.c.topic, _ticks("RL-1", range(1)))
    h.wait_updates(1, "RL-1", timeout_s=60)
    assert h.data("RL-1") == [{"i": 0}]
    assert h.stats().reconnects == 1
    assert a.stats()["connections_total"] == 2
