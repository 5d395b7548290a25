"""One chaos client-fleet process: N reconnecting WebSocket clients under gevent, checking sequences.

Run by `bench.chaos` (several processes below the 20,000 open-file cap). Each
client subscribes to its tokens and tracks, per token and per connection, the
last sequence number it holds (the producer's per-token `q` in the payload):

* lost: a jump in `q` that the frame does not explain. Only a `snapshot`
  marked `"resync": true` may jump; a new connection starts a new baseline
  (the client knows it reconnected), so a close, with or without a code, tells
  the client too.
* duplicate: a tick or snapshot whose `q` is ≤ the last one already held on
  the same connection for that token.

When its connection ends the client reconnects, after a capped jittered
backoff, to the next shard, and subscribes again (the shard answers with
snapshots). Counts are kept apart for clients of the component the
orchestrator names as failed (`fault N`: clients on shard N at that moment)
and for everyone else.

stdin commands: `reset` (zero the counters: warm-up over), `fault N|-1`,
`check ID SINCE {token: seq}` (answered on stdout: clients lagging behind those
values, not connected, closed since SINCE), `slow_read` (the slow client reads
again), `stop` (write the result JSON and exit). stdout: JSON status lines.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.lock  # noqa: E402
from gevent.fileobject import FileObject  # noqa: E402

from bench.workload import subscriptions, token_name, zipf_cdf  # noqa: E402
from bench.wsclient import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, HandshakeError, RawWs  # noqa: E402
from common.backoff import Backoff  # noqa: E402

# Frames may carry partition/offset/ts/resync in any order around `data`: find each field.
DATA_RE = re.compile(rb'\{"type":"(tick|snapshot)"')
TOKEN_RE = re.compile(rb'"token":"([^"]+)"')
SEQ_RE = re.compile(rb'"data":\{"q":(\d+)')
RESYNC = b'"resync":true'
MAX_TOKENS_PER_REQUEST = 100
MAX_SAMPLES = 10


class Totals:
    """Counters of this process; [0] for clients of never-failed components, [1] for the failed one."""

    def __init__(self) -> None:
        self.lost = [0, 0]
        self.gap_events = [0, 0]
        self.dups = [0, 0]
        self.dup_snapshots = [0, 0]
        self.frames = 0
        self.resyncs = 0
        self.closes: Counter[int] = Counter()  # close frames by code
        self.drops = 0  # connections that ended without a close frame
        self.reconnects = 0
        self.handshake_failures: Counter[str] = Counter()
        self.unparsed = 0
        self.errors: Counter[str] = Counter()  # error frames by code
        self.samples: list[dict] = []  # the first few gaps and duplicates, to debug them from

    def as_dict(self) -> dict:
        return {"lost_ok": self.lost[0], "lost_failed": self.lost[1],
                "gap_events_ok": self.gap_events[0], "gap_events_failed": self.gap_events[1],
                "dups_ok": self.dups[0], "dups_failed": self.dups[1],
                "dup_snapshots": sum(self.dup_snapshots), "frames": self.frames,
                "resyncs": self.resyncs, "closes": dict(self.closes), "drops": self.drops,
                "reconnects": self.reconnects, "handshake_failures": dict(self.handshake_failures),
                "unparsed": self.unparsed, "errors": dict(self.errors), "samples": self.samples}

    def sample(self, what: str, c: Client, token: str, prev: int, seq: int, kind: str) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append({"what": what, "client": c.idx, "shard": c.shard, "token": token,
                                 "prev": prev, "seq": seq, "frame": kind, "affected": bool(c.affected),
                                 "conn_age_s": round(time.time() - c.opened_at, 3), "at": time.time()})


class Client:
    """One simulated user: its tokens, its shard, what it holds on its current connection."""

    __slots__ = ("affected", "closed_at", "connected", "idx", "last", "opened_at", "shard", "subscribed",
                 "tokens")

    def __init__(self, idx: int, tokens: list[str], shard: int) -> None:
        self.idx = idx
        self.tokens = tokens
        self.shard = shard
        self.last: dict[str, int] = {}
        self.connected = self.subscribed = False
        self.affected = 0  # 1 once the component it used failed
        self.closed_at = 0.0  # wall clock of the last connection end
        self.opened_at = 0.0

    def lagging(self, target: dict[str, int]) -> bool:
        last = self.last
        return any(last.get(t, 0) < target.get(t, 0) for t in self.tokens)


class Fleet:
    """The clients of this process and what they count."""

    def __init__(self, urls: list[str], clients: list[Client], backoff_cap_s: float,
                 gate: int) -> None:
        self.urls = [urlparse(u) for u in urls]
        self.clients = clients
        self.t = Totals()
        self.backoff_cap_s = backoff_cap_s
        self.gate = gevent.lock.BoundedSemaphore(gate)

    def run_client(self, c: Client) -> None:
        backoff = Backoff(base_s=0.1, cap_s=self.backoff_cap_s)
        first = True
        while True:
            ok = self._session(c, first)
            first = False
            if ok:
                backoff.reset()
            c.shard = (c.shard + 1) % len(self.urls)  # try another shard next
            gevent.sleep(backoff.next_delay_s())
            self.t.reconnects += 1

    def _connect(self, c: Client, first: bool) -> RawWs | None:
        u = self.urls[c.shard]
        try:
            if first:  # after each client's first connection no gate: a storm is a storm
                with self.gate:  # the initial ramp: bounded handshakes in flight
                    return RawWs(u.hostname, u.port, u.path, timeout_s=10)
            return RawWs(u.hostname, u.port, u.path, timeout_s=10)
        except HandshakeError as exc:
            self.t.handshake_failures[f"http_{exc.status}"] += 1
        except OSError as exc:
            self.t.handshake_failures[type(exc).__name__] += 1
        return None

    def _session(self, c: Client, first: bool) -> bool:
        """One connection: subscribe, check every frame until it ends. True if it got subscribed."""
        ws = self._connect(c, first)
        if ws is None:
            return False
        c.last = {}
        c.connected = True
        c.opened_at = time.time()
        try:
            ws.send(json.dumps({"op": "subscribe", "tokens": c.tokens, "id": 1}).encode())
            self._read(c, ws)
        except OSError:  # reset or aborted: ended without a close frame
            self.t.drops += 1
        finally:
            ws.close()
            ok = c.subscribed
            c.connected = c.subscribed = False
            c.closed_at = time.time()
        return ok

    def _read(self, c: Client, ws: RawWs) -> None:
        for op, payload in ws.frames():  # self.t, not a local: `reset` replaces it mid-session
            if op == OP_TEXT:
                m = DATA_RE.match(payload)
                if m is not None:
                    self._data(c, m[1] == b"snapshot", payload)
                elif b'"type":"subscribed"' in payload:
                    c.subscribed = True
                elif b'"type":"error"' in payload:  # e.g. a rate-limited subscribe: say why it never acked
                    self.t.errors[str(json.loads(payload).get("code"))] += 1
            elif op == OP_PING:
                ws.send(payload, OP_PONG)
            elif op == OP_CLOSE:
                self.t.closes[int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005] += 1
                return
        self.t.drops += 1

    def _data(self, c: Client, snapshot: bool, payload: bytes) -> None:
        t = self.t
        tm, sm = TOKEN_RE.search(payload), SEQ_RE.search(payload)
        if tm is None or sm is None:
            t.unparsed += 1
            return
        t.frames += 1
        token, seq = tm[1].decode(), int(sm[1])
        resync = snapshot and RESYNC in payload
        t.resyncs += resync
        prev = c.last.get(token)
        if prev is None:  # first value of this token on this connection: the baseline
            c.last[token] = seq
            return
        a = c.affected
        if seq <= prev:
            t.dups[a] += 1
            t.dup_snapshots[a] += snapshot
            t.sample("duplicate", c, token, prev, seq, "snapshot" if snapshot else "tick")
            return
        if seq > prev + 1 and not resync:
            t.lost[a] += seq - prev - 1
            t.gap_events[a] += 1
            t.sample("gap", c, token, prev, seq, "snapshot" if snapshot else "tick")
        c.last[token] = seq

    def status(self) -> dict:
        cs = self.clients
        return {"connected": sum(c.connected for c in cs), "ready": sum(c.subscribed for c in cs),
                "clients": len(cs), "frames": self.t.frames, "lost_ok": self.t.lost[0],
                "dups": sum(self.t.dups), "reconnects": self.t.reconnects}

    def check(self, target: dict[str, int], since: float) -> dict:
        """How far the clients are from holding `target` (token → seq)."""
        lagging = lagging_closed = not_ready = 0
        for c in self.clients:
            if not c.subscribed:
                not_ready += 1
            elif c.lagging(target):
                if c.closed_at >= since:
                    lagging_closed += 1
                else:
                    lagging += 1
        return {"lagging": lagging, "lagging_closed": lagging_closed, "not_ready": not_ready,
                "frames": self.t.frames}

    def mark_fault(self, shard: int) -> None:
        for c in self.clients:
            if shard >= 0 and c.shard == shard:
                c.affected = 1


class SlowClient:
    """Subscribes to every token, then stops reading (a tiny receive buffer) until told to read."""

    def __init__(self, url: str, tokens: list[str]) -> None:
        self.url = urlparse(url)
        self.tokens = tokens
        self.go = gevent.event.Event()
        self.result: dict = {"connected": False, "close_code": None, "frames_read": 0}

    def run(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        try:
            sock.connect((self.url.hostname, self.url.port))
            ws = RawWs.over(sock, self.url.hostname, self.url.port, self.url.path)
        except (OSError, HandshakeError) as exc:
            self.result["error"] = repr(exc)
            return
        self.result["connected"] = True
        for i in range(0, len(self.tokens), MAX_TOKENS_PER_REQUEST):
            ws.send(json.dumps({"op": "subscribe", "tokens": self.tokens[i:i + MAX_TOKENS_PER_REQUEST],
                                "id": i}).encode())
        self.go.wait()  # not reading: the shard's outbox for this client fills up
        started = time.monotonic()
        try:
            for op, payload in ws.frames():
                self.result["frames_read"] += 1
                if op == OP_CLOSE:
                    self.result["close_code"] = int.from_bytes(payload[:2], "big")
                    break
        except OSError as exc:
            self.result["error"] = repr(exc)
        self.result["read_s"] = round(time.monotonic() - started, 3)
        ws.close()


def build(a: argparse.Namespace) -> tuple[Fleet, SlowClient | None]:
    urls = a.urls.split(",")
    cdf = zipf_cdf(a.tokens, 0.0)  # uniform popularity: every token has subscribers everywhere
    clients = [Client(i, subscriptions(i, a.seed, cdf, a.subs), i % len(urls))
               for i in range(a.first, a.first + a.count)]
    fleet = Fleet(urls, clients, a.backoff_cap_s, a.concurrency)
    slow = None
    if a.slow:
        slow = SlowClient(urls[0], [token_name(r) for r in range(a.tokens)])
    return fleet, slow


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--urls", required=True, help="comma-separated shard WebSocket URLs")
    p.add_argument("--first", type=int, required=True, help="global index of this process's first client")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--subs", type=int, required=True)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight during the ramp")
    p.add_argument("--backoff-cap-s", type=float, default=2.0)
    p.add_argument("--slow", action="store_true", help="also run one client that stops reading")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.count + 512)), hard))
    fleet, slow = build(a)
    for c in fleet.clients:
        gevent.spawn(fleet.run_client, c)
    if slow is not None:
        gevent.spawn(slow.run)
    gevent.spawn(_status_loop, fleet)
    _commands(fleet, slow)
    doc = {**fleet.t.as_dict(), **fleet.status(), "slow": slow.result if slow else None}
    with open(a.out, "w") as f:
        json.dump(doc, f)
    print(json.dumps({"done": True}), flush=True)
    sys.exit(0)


def _commands(fleet: Fleet, slow: SlowClient | None) -> None:
    """Serve the orchestrator's commands until `stop` (or its end of the pipe closes)."""
    stdin = FileObject(sys.stdin, "r")
    while True:
        line = stdin.readline()
        if not line or line.strip() == "stop":
            return
        word, _, rest = line.strip().partition(" ")
        if word == "reset":
            fleet.t = Totals()
        elif word == "fault":
            fleet.mark_fault(int(rest))
        elif word == "check":
            cid, since, target = rest.split(" ", 2)
            reply = fleet.check(json.loads(target), float(since))
            print(json.dumps({"check": int(cid), **reply}), flush=True)
        elif word == "slow_read" and slow is not None:
            slow.go.set()


def _status_loop(fleet: Fleet) -> None:
    while True:
        print(json.dumps(fleet.status()), flush=True)
        gevent.sleep(0.5)


if __name__ == "__main__":
    main()
