"""The front door (nginx, upstream from the registry) on the real stack: spread, drain, undrain, kill."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket

from devstack.frontdoor import FrontDoorProc, find_nginx, start_frontdoor
from tests.integration.admin_client import Admin, pb
from tests.integration.helpers import WsClient, produce, producer, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed: `make nginx` installs "
                       "nginx-light, which the front door runs"),
]
TOKEN = "FD-1"
FAST_TTL = ("--heartbeat-s", "0.5", "--heartbeat-ttl-s", "2")  # a killed shard leaves the registry in 2 s


class Ticker:
    """Produces a tick of TOKEN every 20 ms until stopped, so every connected client keeps getting ticks."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        prod = producer(self.stack.kafka.bootstrap)
        i = 0
        while not self.stop.wait(0.02):
            produce(prod, self.stack.c.topic, [(TOKEN, json.dumps({"i": i}).encode())])
            i += 1
        prod.close()


class Client:
    """A client of the front door as clients should be written: subscribe, read ticks, and on a
    close (1012 from a draining shard, or a dropped connection) come back through the same URL
    after a jittered pause."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ticks = 0
        self.connects = 0
        self.closes: list[int] = []  # close codes received; 0 for a connection that just dropped
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                ws = websocket.create_connection(self.url, timeout=5)
            except (OSError, websocket.WebSocketException):
                self.stop.wait(random.uniform(0.1, 0.3))
                continue
            self.connects += 1
            self.closes.append(self._read(ws))
            ws.close()
            self.stop.wait(random.uniform(0.1, 0.5))

    def _read(self, ws) -> int:
        ws.send(json.dumps({"op": "subscribe", "tokens": [TOKEN]}))
        while not self.stop.is_set():
            try:
                op, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException):
                return 0
            if op == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(frame.data[:2], "big")
            if op == websocket.ABNF.OPCODE_TEXT and b'"tick"' in frame.data:
                self.ticks += 1
        return -1  # stopped by the test

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


def _close_all(clients: list[Client], ticker: Ticker) -> None:
    """Stop every client at once while ticks still flow (each wakes on its next frame), then the ticker."""
    for c in clients:
        c.stop.set()
    for c in clients:
        c.close()
    ticker.stop.set()
    ticker.thread.join(15)


def _connections(shards: dict) -> dict[str, int]:
    return {sid: sp.stats()["connections"] for sid, sp in shards.items()}


def _opened(shards: dict) -> dict[str, int]:
    return {sid: sp.stats()["connections_total"] for sid, sp in shards.items()}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _reloaded(workdir: Path) -> bool:
    """nginx's reload has finished: one worker accepts (the new one); every other is shutting down,
    which an nginx worker announces in its title just before it closes its listening sockets."""
    master = int((workdir / "nginx.pid").read_text())
    titles = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == master:
                titles.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").strip())
        except (OSError, ValueError, IndexError):
            continue  # a process that just exited
    accepting = [t for t in titles if t == b"nginx: worker process"]
    return len(accepting) == 1 and all(b"shutting down" in t for t in titles if t not in accepting)


def _front(stack, tmp_path) -> FrontDoorProc:
    fd = start_frontdoor(stack.c.redis_url, stack.c.namespace, 0, tmp_path / "frontdoor",
                         stack.c.logdir, poll_s=0.3)
    stack.procs.append(fd)  # stopped (and its log shown on failure) with the rest of the stack
    return fd


@contextlib.contextmanager
def _taken_port():
    """A loopback port another socket listens on for the duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_front_door_retries_on_another_port_when_its_port_is_taken(stack, tmp_path):
    """nginx given a taken port exits "Address already in use": with fallback the front door starts
    it again on another free port, reports that port and routes there; an exact port fails instead."""
    stack.shard("A")
    stack.dispatcher()
    with _taken_port() as port:
        with pytest.raises(RuntimeError, match="exited"):
            start_frontdoor(stack.c.redis_url, stack.c.namespace, port, tmp_path / "exact",
                            tmp_path / "exact-logs")
        assert f"127.0.0.1:{port} failed (98: Address already in use)" in (
            tmp_path / "exact" / "nginx.log").read_text()
        fd = start_frontdoor(stack.c.redis_url, stack.c.namespace, port, tmp_path / "frontdoor",
                             stack.c.logdir, poll_s=0.3, fallback=True)
        stack.procs.append(fd)
        assert fd.port != port and json.loads((tmp_path / "frontdoor" / "ports.json").read_text()) == {
            "http": fd.port}
        nginx_log = (tmp_path / "frontdoor" / "nginx.log").read_text()
        assert f"127.0.0.1:{port} failed (98: Address already in use)" in nginx_log  # the retry happened
        wait_for(lambda: fd.shards() == ["A"], what="A in the upstream")
        client = WsClient(fd.url)
        client.subscribe(TOKEN)
        produce(producer(stack.kafka.bootstrap), stack.c.topic, [(TOKEN, b'{"i":0}')])
        assert json.loads(client.ticks(1)[0])["data"] == {"i": 0}


def test_front_door_spreads_clients_and_serves_the_demo_page_and_client_files(stack, tmp_path):
    """One URL: 9 clients land 3 per shard (least_conn) and get ticks; /, /client/ and /healthz
    answer through nginx; a shard's /metrics does not."""
    shards = {sid: stack.shard(sid) for sid in ("A", "B", "C")}
    stack.dispatcher()
    fd = _front(stack, tmp_path)
    assert fd.shards() == ["A", "B", "C"]
    clients = [WsClient(fd.url) for _ in range(9)]
    for c in clients:
        c.subscribe(TOKEN)
    assert _connections(shards) == {"A": 3, "B": 3, "C": 3}
    produce(producer(stack.kafka.bootstrap), stack.c.topic, [(TOKEN, b'{"i":0}')])
    for c in clients:
        assert json.loads(c.ticks(1)[0])["data"] == {"i": 0}
    direct = shards["A"].ws_url.replace("ws://", "http://").removesuffix("/ws")
    status, page = _get(f"{fd.http_url}/")
    assert status == 200 and b"<title>shardcast" in page and page == _get(f"{direct}/")[1]
    # The JS client files are whatever the shards serve: the front door passes them through.
    assert _get(f"{fd.http_url}/client/index.js") == _get(f"{direct}/client/index.js")
    assert _get(f"{fd.http_url}/metrics")[0] == 404
    assert fd.health() == (200, {"ok": True, "shards": ["A", "B", "C"], "generation": 1})  # never reloaded


def test_drained_shard_is_skipped_and_its_clients_return_through_the_front_door(stack, tmp_path):
    """Drain B: its clients get 1012 and come back through the front door on A and C, new
    connections never land on B, nginx drops it from the upstream; undrain brings it back."""
    shards = {sid: stack.shard(sid) for sid in ("A", "B", "C")}
    d = stack.dispatcher()
    admin = Admin(d.admin_target)
    fd = _front(stack, tmp_path)
    ticker = Ticker(stack)
    clients = []
    try:
        for _ in range(9):  # one at a time, so least_conn sees each before the next
            clients.append(Client(fd.url))
            wait_for(lambda: sum(_connections(shards).values()) == len(clients), what="connected")
        assert _connections(shards) == {"A": 3, "B": 3, "C": 3}
        wait_for(lambda: all(c.ticks > 0 for c in clients), timeout_s=30, what="ticks on every client")
        opened_b = _opened(shards)["B"]
        progress = admin.drain("B", 1.0)
        assert progress[-1].done and progress[-1].closed == 3
        wait_for(lambda: sum(len(c.closes) for c in clients) == 3, what="B's clients closed")
        assert sorted(code for c in clients for code in c.closes) == [1012] * 3
        on_b = [c for c in clients if c.closes]
        before = [c.ticks for c in on_b]
        wait_for(lambda: all(c.ticks > b for c, b in zip(on_b, before, strict=True)), timeout_s=30,
                 what="B's clients back with ticks")
        wait_for(lambda: fd.shards() == ["A", "C"], what="B out of the upstream")
        wait_for(lambda: _reloaded(tmp_path / "frontdoor"), what="the previous worker no longer accepting")
        dropped = fd.generation()  # the config without B, now the only one accepting
        fresh = [WsClient(fd.url) for _ in range(4)]
        for c in fresh:
            c.subscribe(TOKEN)
        conns = _connections(shards)
        assert conns["B"] == 0 and conns["A"] + conns["C"] == 13
        assert _opened(shards)["B"] == opened_b  # nothing reached B since the drain began
        assert [c.connects for c in on_b] == [2, 2, 2]  # one reconnect each, straight to A or C
        for c in fresh:
            c.close()
        admin.stub.UndrainShard(pb.UndrainShardRequest(shard_id="B"), timeout=10)
        # A worker of the config before the drain (it listed B) may still answer just after a
        # reload: only a newer generation listing B proves the undrain reached nginx.
        wait_for(lambda: fd.routes(["A", "B", "C"], after=dropped), what="B back in the upstream")
        wait_for(lambda: _reloaded(tmp_path / "frontdoor"), what="the previous worker no longer accepting")
        # The reloaded worker counts only its own connections: 3 new ones go one to each shard.
        back = [WsClient(fd.url) for _ in range(3)]
        for c in back:
            c.subscribe(TOKEN)
        conns = _connections(shards)  # on failure: whom nginx routes to now and what B refused
        assert conns["B"] == 1, (conns, fd.shards(), shards["B"].stats()["upgrades_refused"])
        assert all(json.loads(c.ticks(1)[0])["token"] == TOKEN for c in back)
    finally:
        _close_all(clients, ticker)


def test_killed_shard_is_skipped_at_once_and_dropped_from_the_upstream(stack, tmp_path):
    """SIGKILL C: while nginx still lists it, new clients through the front door connect anyway
    (refused, retried on the next shard), C's clients come back on A and B, and nginx drops C
    once its registry entry expires."""
    shards = {sid: stack.shard(sid, *FAST_TTL) for sid in ("A", "B", "C")}
    stack.dispatcher()
    fd = _front(stack, tmp_path)
    ticker = Ticker(stack)
    clients = []
    try:
        for _ in range(6):
            clients.append(Client(fd.url))
            wait_for(lambda: sum(_connections(shards).values()) == len(clients), what="connected")
        assert _connections(shards) == {"A": 2, "B": 2, "C": 2}
        fd.proc.send_signal(signal.SIGSTOP)  # freeze the upstream with C in it (nginx runs on)
        try:
            shards["C"].proc.send_signal(signal.SIGKILL)
            shards["C"].proc.wait(10)
            fresh = [WsClient(fd.url) for _ in range(4)]
            for c in fresh:
                c.subscribe(TOKEN)
            assert fd.shards() == ["A", "B", "C"]  # they connected while nginx still listed C
        finally:
            fd.proc.send_signal(signal.SIGCONT)
        alive = {sid: shards[sid] for sid in ("A", "B")}
        wait_for(lambda: sum(_connections(alive).values()) == 10, timeout_s=30,
                 what="C's clients back on A and B")
        before = [c.ticks for c in clients]
        wait_for(lambda: all(c.ticks > b for c, b in zip(clients, before, strict=True)), timeout_s=30,
                 what="every client getting ticks")
        wait_for(lambda: fd.shards() == ["A", "B"], what="C out of the upstream")
        assert sorted(c.closes.count(0) for c in clients) == [0, 0, 0, 0, 1, 1]  # C's two dropped
    finally:
        _close_all(clients, ticker)
