"""The JavaScript client (clients/js) against real shards, dispatcher, Kafka and Redis.

Each test runs `clients/js/test/integration/driver.mjs` under Node (Node 20 with
`--experimental-websocket`, which provides the global WebSocket): real
`ShardcastClient`s whose every event comes back as a JSON line. The test makes
the faults (drain, SIGTERM, SIGKILL, bad and expiring tokens, records lost for a
frozen shard) and asserts what the client did about them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import jwt
import pytest

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
ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "clients" / "js" / "test" / "integration" / "driver.mjs"
NODE = shutil.which("node")
SECRET = secrets.token_urlsafe(32)


def _node_cmd() -> list[str]:
    """node, with --experimental-websocket where the global WebSocket needs it (Node < 22)."""
    if NODE is None:
        pytest.skip("node is not installed (make node-deps installs it)")
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"the JS client needs Node >= 20, found {version.strip()}"
    return [NODE, *(["--experimental-websocket"] if major < 22 else []), str(DRIVER)]


class Driver:
    """The Node process: its events as dicts (read by a thread), commands on its stdin."""

    def __init__(self, clients: list[dict], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.stderr = log.open("w")
        env = {**os.environ, "SHARDCAST_JS_DRIVER": json.dumps({"clients": clients})}
        self.proc = subprocess.Popen(_node_cmd(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env, cwd=DRIVER.parent)
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.log = log

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.lock:
                self.events.append(json.loads(line))

    def of(self, client: str, ev: str, **match) -> list[dict]:
        """Events `ev` of `client` (in order) whose fields equal `match`."""
        with self.lock:
            return [e for e in self.events if e.get("client") == client and e["ev"] == ev
                    and all(e.get(k) == v for k, v in match.items())]

    def wait(self, client: str, ev: str, n: int = 1, timeout_s: float = 30, **match) -> list[dict]:
        """Wait until `client` has emitted at least `n` matching events; return them all."""
        def enough():
            assert self.proc.poll() is None or len(self.of(client, ev, **match)) >= n, self._died()
            found = self.of(client, ev, **match)
            return found if len(found) >= n else None
        return wait_for(enough, timeout_s=timeout_s, what=f"{client}: {n} x {ev} {match}")[0]

    def updates(self, client: str, token: str) -> list[dict]:
        return self.of(client, "update", token=token)

    def send(self, cmd: dict) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stats(self, client: str) -> dict:
        before = len(self.of(client, "stats"))
        self.send({"cmd": "stats", "client": client})
        return self.wait(client, "stats", n=before + 1)[-1]

    def _died(self) -> str:
        self.stderr.flush()
        return f"node driver exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


@pytest.fixture
def js(stack):
    """Start a driver with the given clients; every driver is stopped at teardown."""
    drivers: list[Driver] = []

    def start(*clients: dict) -> Driver:
        drv = Driver(list(clients), stack.c.logdir / f"node-{len(drivers)}.log")
        drivers.append(drv)
        return drv

    yield start
    for drv in drivers:
        drv.close()


def _ticks(token: str, start: int, n: int) -> list[tuple[str, bytes]]:
    return [(token, json.dumps({"i": i}).encode()) for i in range(start, start + n)]


def _sequence(updates: list[dict]) -> list[int]:
    return [u["data"]["i"] for u in updates]


def _assert_in_order_once(updates: list[dict]) -> None:
    """Per token, positions only grow: nothing surfaced twice, nothing out of order."""
    positions = [(u["partition"], u["offset"]) for u in updates]
    assert len({p for p, _ in positions}) == 1, positions
    offsets = [o for _, o in positions]
    assert offsets == sorted(set(offsets)), offsets


def _shard_of(url: str, shards) -> object:
    return next(s for s in shards if s.ws_url == url)


def test_ticks_and_snapshot_reach_the_js_client_in_order_with_positions(stack, js):
    """A value produced before the subscribe comes as kind "snapshot"; then every tick, in order,
    with its Kafka position; a payload that is not JSON comes as bytes."""
    a = stack.shard("A")
    d = stack.dispatcher()
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, [("JS-SNAP", b'{"v":-1}')])
    wait_for(lambda: d.stats()["records_consumed"] >= 1, timeout_s=30, what="the first record consumed")
    drv = js({"name": "c", "urls": [a.ws_url], "tokens": ["JS-SNAP", "JS-T"]})
    drv.wait("c", "state", state="connected")
    snap = drv.wait("c", "update", token="JS-SNAP")[0]
    assert (snap["kind"], snap["data"]) == ("snapshot", {"v": -1})
    produce(feed, stack.c.topic, [*_ticks("JS-T", 0, 50), ("JS-T", b"\xff\x00 not json")])
    got = drv.wait("c", "update", n=51, token="JS-T")
    assert [u["kind"] for u in got] == ["tick"] * 51
    assert _sequence(got[:50]) == list(range(50))
    assert got[50]["data"] == {"b64": "/wAgbm90IGpzb24="}
    _assert_in_order_once(got)
    assert all(u["ts"] > 0 and u["receivedAt"] >= u["ts"] - 60_000 for u in got)
    st = drv.stats("c")
    assert (st["updates"], st["duplicates"], st["reconnects"]) == (52, 0, 0)


def test_drain_moves_the_js_client_to_the_other_shard_at_once_with_nothing_twice(stack, js):
    """DrainShard: the client gets 1012, reconnects at once (no delay) to the other shard,
    resubscribes and keeps receiving; the new shard's snapshot of the held value is a duplicate."""
    shards = [stack.shard("A"), stack.shard("B")]
    d = stack.dispatcher()
    drv = js({"name": "c", "urls": [s.ws_url for s in shards], "tokens": ["JS-D"]})
    first = _shard_of(drv.wait("c", "state", state="connected")[0]["url"], shards)
    other = next(s for s in shards if s is not first)
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("JS-D", 0, 20))
    before = drv.wait("c", "update", n=20, token="JS-D")
    progress = Admin(d.admin_target).drain(first.shard_id, 1.0)
    assert progress[-1].done and progress[-1].closed == 1
    moved = drv.wait("c", "state", state="reconnecting")[0]
    assert (moved["code"], moved["delayMs"], moved["url"]) == (1012, 0, other.ws_url)
    drv.wait("c", "state", n=2, state="connected")
    # B had no value of JS-D: the dispatcher sends it the one the client already holds.
    dup = drv.wait("c", "duplicate", token="JS-D")[0]
    assert (dup["partition"], dup["offset"]) == (before[-1]["partition"], before[-1]["offset"])
    produce(feed, stack.c.topic, _ticks("JS-D", 20, 20))
    got = drv.wait("c", "update", n=40, token="JS-D")
    assert _sequence(got) == list(range(40))
    _assert_in_order_once(got)
    assert [s["url"] for s in drv.of("c", "state", state="connected")] == [first.ws_url, other.ws_url]


def test_sigterm_then_sigkill_the_js_client_moves_on_each_time(stack, js):
    """SIGTERM (1001): reconnect at once to another shard; SIGKILL (1006): reconnect after a
    jittered backoff within the first bound, to the shard not going away; ticks keep coming, none twice."""
    shards = [stack.shard("A"), stack.shard("B"), stack.shard("C")]
    stack.dispatcher()
    drv = js({"name": "c", "urls": [s.ws_url for s in shards], "tokens": ["JS-K"],
              "options": {"backoff": {"initialS": 0.25, "maxS": 2}}})
    first = _shard_of(drv.wait("c", "state", state="connected")[0]["url"], shards)
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("JS-K", 0, 10))
    drv.wait("c", "update", n=10, token="JS-K")

    first.proc.send_signal(signal.SIGTERM)
    term = drv.wait("c", "state", state="reconnecting")[0]
    assert (term["code"], term["delayMs"]) == (1001, 0)
    second = _shard_of(drv.wait("c", "state", n=2, state="connected")[1]["url"], shards)
    assert second is not first
    produce(feed, stack.c.topic, _ticks("JS-K", 10, 10))
    drv.wait("c", "update", n=20, token="JS-K")

    os.kill(second.proc.pid, signal.SIGKILL)
    kill = drv.wait("c", "state", n=2, state="reconnecting")[1]
    third = next(s for s in shards if s is not first and s is not second)
    assert kill["code"] == 1006 and 0 <= kill["delayMs"] <= 250, kill
    assert kill["url"] == third.ws_url  # the SIGTERMed shard's URL is cooling: not tried first
    assert drv.wait("c", "state", n=3, state="connected")[2]["url"] == third.ws_url
    produce(feed, stack.c.topic, _ticks("JS-K", 20, 10))
    got = drv.wait("c", "update", n=30, token="JS-K")
    assert _sequence(got) == list(range(30))
    _assert_in_order_once(got)
    assert len(drv.updates("c", "JS-K")) == 30


def test_js_client_auth_first_message_refresh_and_bad_token(stack, js):
    """--auth jwt: the token goes in the first message; the refresh hook runs before the first
    token's exp and keeps the connection open past it; forbidden tokens are dropped; a bad
    token gets auth_failed (4003) and the client stops: one connection, no reconnect loop."""
    stack.c.env["SHARDCAST_JWT_SECRET"] = SECRET
    s = stack.shard("S", "--auth", "jwt")
    stack.dispatcher()
    short = issue(SECRET.encode(), ["AUTH-*"], 5)
    exp1 = jwt.decode(short, options={"verify_signature": False})["exp"]
    fresh = issue(SECRET.encode(), ["AUTH-*"], 600)
    forged = issue(secrets.token_bytes(32), ["*"], 600)
    drv = js({"name": "good", "urls": [s.ws_url], "tokens": ["AUTH-1", "NOPE-1"], "tokenSeq": [short, fresh]},
             {"name": "bad", "urls": [s.ws_url], "tokens": ["AUTH-1"], "token": forged})

    assert drv.wait("bad", "auth_failed")[0]["code"] == 4003
    assert [e["state"] for e in drv.wait("bad", "state", n=2)] == ["connecting", "closed"]

    drv.wait("good", "state", state="connected")
    forbidden = drv.wait("good", "error", code="forbidden")[0]
    assert forbidden["tokens"] == ["NOPE-1"]
    hook = drv.wait("good", "token_hook", n=2)[1]
    assert hook["t"] < exp1 * 1000  # refreshed before the first token expired
    wait_for(lambda: time.time() > exp1 + 1, timeout_s=30, what="the first token's exp passed")
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("AUTH-1", 0, 5))
    got = drv.wait("good", "update", n=5, token="AUTH-1")
    assert _sequence(got) == list(range(5))
    assert all(u["receivedAt"] > exp1 * 1000 for u in got)
    assert drv.of("good", "state", state="reconnecting") == []
    assert [e["state"] for e in drv.of("good", "state")] == ["connecting", "connected"]
    stats = s.stats()
    assert (stats["connections_total"], stats["auth_failures"], stats["auth_closed"]) == (2, 1, 0)
    assert drv.of("bad", "state", state="connecting") == drv.of("bad", "state")[:1]


def test_js_client_gets_gap_on_4010_resubscribes_and_a_resync_elsewhere(stack, js):
    """Records lost for a frozen shard: the client of the token with no value left gets 4010 →
    a `gap` event, reconnects and resubscribes, and receives again; the other token's client
    gets the value as kind "resync" (set-up of test_no_silent_loss's 4010 test)."""
    a = stack.shard("A", *GAP_SHARD_FLAGS)
    d = stack.dispatcher("targeted", *GAP_DISPATCHER_FLAGS)
    old, new = GAP_OLD, GAP_NEW
    quiet = {"pingIntervalS": 120}  # the frozen shard answers no ping: none is due while it is stopped
    drv = js({"name": "old", "urls": [a.ws_url], "tokens": [old], "options": quiet},
             {"name": "new", "urls": [a.ws_url], "tokens": [new], "options": quiet})
    drv.wait("old", "state", state="connected")
    drv.wait("new", "state", state="connected")
    feed = producer(stack.kafka.bootstrap)
    overflow_while_frozen(a, d, feed, stack.c.topic)

    assert drv.wait("old", "gap")[0]["tokens"] == [old]
    closed = drv.wait("old", "state", state="reconnecting")[0]
    assert closed["code"] == 4010
    drv.wait("old", "state", n=2, state="connected")
    resync = drv.wait("new", "update", kind="resync")[0]
    assert resync["data"] == {"s": 999}
    assert drv.stats("new")["resyncs"] == 1
    assert drv.of("new", "gap") == []

    produce(feed, stack.c.topic, [(old, b'{"s":5000}')])
    last = drv.wait("old", "update", data={"s": 5000})[0]
    assert last["kind"] == "tick"
    _assert_in_order_once(drv.updates("old", old))
    assert drv.stats("old")["gaps"] == 1


def _wire(drv: Driver, client: str, direction: str, **match) -> list[dict]:
    """Protocol frames `client` sent ("out") or received ("in", data frames left out) matching `match`."""
    return [e["frame"] for e in drv.of(client, "wire", dir=direction)
            if all(e["frame"].get(k) == v for k, v in match.items())]


def test_js_client_pings_a_quiet_connection_and_the_shard_answers_each(stack, js):
    """No ticks flowing: every pingIntervalS the client sends {"op":"ping"}, the real shard answers
    each with a pong of its id, and the client stays on its first connection (no reconnect)."""
    a = stack.shard("A")
    stack.dispatcher()
    drv = js({"name": "c", "urls": [a.ws_url], "tokens": ["JS-P"], "wire": True,
              "options": {"pingIntervalS": 0.3, "pongTimeoutS": 60}})
    drv.wait("c", "state", state="connected")
    wait_for(lambda: len(_wire(drv, "c", "in", type="pong")) >= 3, timeout_s=60, what="3 pongs")
    pongs = _wire(drv, "c", "in", type="pong")
    pings = _wire(drv, "c", "out", op="ping")
    assert all(set(p) == {"op", "id"} for p in pings), pings
    assert [p["id"] for p in pongs] == [p["id"] for p in pings][:len(pongs)]
    assert len(pings) - len(pongs) in (0, 1)  # at most the latest ping still in flight
    produce(producer(stack.kafka.bootstrap), stack.c.topic, _ticks("JS-P", 0, 1))
    assert drv.wait("c", "update", token="JS-P")[0]["data"] == {"i": 0}
    assert [e["state"] for e in drv.of("c", "state")] == ["connecting", "connected"]
    assert drv.stats("c")["reconnects"] == 0
    assert a.stats()["connections_total"] == 1


def test_js_client_gives_up_on_a_frozen_shard_after_pong_timeout_and_moves_on(stack, js):
    """The client's shard is SIGSTOPped: its ping goes unanswered for pongTimeoutS, the client hangs
    up (4000), backs off (exact with random 0.5: 125 ms), reconnects to the other URL, resubscribes
    and receives the tick produced afterwards."""
    shards = [stack.shard("A"), stack.shard("B")]
    stack.dispatcher()
    drv = js({"name": "c", "urls": [s.ws_url for s in shards], "tokens": ["JS-PT"], "random": 0.5,
              "wire": True, "options": {"pingIntervalS": 0.5, "pongTimeoutS": 3}})
    first = _shard_of(drv.wait("c", "state", state="connected")[0]["url"], shards)
    other = next(s for s in shards if s is not first)
    feed = producer(stack.kafka.bootstrap)
    produce(feed, stack.c.topic, _ticks("JS-PT", 0, 1))
    drv.wait("c", "update", token="JS-PT")
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        moved = drv.wait("c", "state", state="reconnecting", timeout_s=60)[0]
        assert (moved["code"], moved["delayMs"], moved["url"]) == (4000, 125, other.ws_url)
        assert "no answer to a ping" in moved["reason"]
        unanswered = _wire(drv, "c", "out", op="ping")[-1]["id"]
        assert unanswered not in [p["id"] for p in _wire(drv, "c", "in", type="pong")]
        assert drv.wait("c", "state", n=2, state="connected", timeout_s=60)[1]["url"] == other.ws_url
        produce(feed, stack.c.topic, _ticks("JS-PT", 1, 1))
        got = drv.wait("c", "update", n=2, token="JS-PT", timeout_s=60)
        assert _sequence(got) == [0, 1]
        assert drv.stats("c")["reconnects"] == 1
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)


def test_js_client_backs_off_after_4029_then_resubscribes(stack, js):
    """A shard with a 5-request budget (no refill to speak of): the client made to send 25 more subscribes
    gets rate_limited, then the shard closes 4029; the client reconnects after a backoff delay
    (exact with random 0.5: 125 ms, not the immediate reconnect of 1012), resubscribes, receives."""
    a = stack.shard("A", "--requests-per-s", "0.001", "--request-burst", "5")
    stack.dispatcher()
    drv = js({"name": "c", "urls": [a.ws_url], "tokens": ["JS-RL"], "random": 0.5})
    drv.wait("c", "state", state="connected")
    # The subscribe at connect, then 25: 5 pass, 20 get rate_limited, the 26th request is answered
    # with 4029. No more: a request still unread when the shard hangs up makes its kernel send a
    # reset, which may overtake the close frame (then the client sees 1006).
    for i in range(25):
        drv.send({"cmd": "subscribe", "client": "c", "tokens": [f"JS-RL-{i}"]})
    moved = drv.wait("c", "state", state="reconnecting", timeout_s=60)[0]
    assert (moved["code"], moved["delayMs"], moved["url"]) == (4029, 125, a.ws_url)
    drv.wait("c", "state", n=2, state="connected", timeout_s=60)
    produce(producer(stack.kafka.bootstrap), stack.c.topic, _ticks("JS-RL", 0, 1))
    assert drv.wait("c", "update", token="JS-RL", timeout_s=60)[0]["data"] == {"i": 0}
    assert drv.stats("c")["reconnects"] == 1
    assert a.stats()["connections_total"] == 2
