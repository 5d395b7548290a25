"""The shard's failure paths with fakes at their seams: the client writer against a fake socket that
takes partial sends (exact bytes on the wire), the control-frame headroom overflow, the write-timeout
hang-up on an injected clock, and the loop-lag, stall and GC-pause histograms on injected clocks."""

from __future__ import annotations

import gc
import socket
import time
from collections import Counter
from types import SimpleNamespace

import gevent
import pytest

from common.metrics import FastHistogram
from shard import loopwatch as loopwatch_mod
from shard import wsconn as wsconn_mod
from shard.codes import Close
from shard.hub import Hub
from shard.loopwatch import LAG_BUCKETS_S, PROBE_S, LoopWatch
from shard.outbox import CONTROL_HEADROOM
from shard.protocol import close_frame, ws_frame
from shard.wsconn import ABORT, Connection


class Clock:
    """time.monotonic as shard.wsconn sees it (a real monotonic value is never 0)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


_FD = socket.socket()


class Wire:
    """The OS socket under gevent's wrapper: `send` takes at most `room` bytes (None: all), else
    raises BlockingIOError as a full non-blocking socket does; `data` is every byte it took."""

    def __init__(self, room: int | None = None) -> None:
        self.room = room
        self.data = bytearray()
        self.stuck = False  # the peer never reads again: every wait for room is a whole wait slice

    def send(self, data) -> int:
        n = len(data) if self.room is None else min(self.room, len(data))
        if n == 0:
            raise BlockingIOError
        self.data += bytes(data[:n])
        if self.room is not None:
            self.room -= n
        return n

    def fileno(self) -> int:
        return _FD.fileno()  # a real descriptor for the SIOCOUTQ ioctl (unconnected: 0 bytes queued)


class Sock:
    """gevent's socket wrapper: options, shutdown, and `_wait`, which returns once the peer has read
    (the test gives the wire room) or, on a stuck wire, lets the connection's wait slice run out."""

    def __init__(self, wire: Wire, clock: Clock) -> None:
        self._sock = wire
        self.clock = clock
        self.opts: dict[tuple[int, int], object] = {}
        self.shut = False
        self.waits = 0
        self._write_event = object()
        self.conn: Connection | None = None

    def setsockopt(self, level: int, name: int, value) -> None:
        self.opts[(level, name)] = value

    def getsockopt(self, level: int, name: int) -> int:
        return 2 * int(self.opts.get((level, name), 65536))

    def shutdown(self, how: int) -> None:
        self.shut = True

    def _wait(self, event) -> None:
        self.waits += 1
        wire = self._sock
        if wire.stuck:
            timer = self.conn.wait_slice
            self.clock.now += timer.seconds
            raise timer  # what gevent raises when the slice passes with the socket still full
        while wire.room == 0:
            gevent.sleep(0.001)


def connection(monkeypatch, room: int | None = None, **cfg) -> tuple[Connection, Wire, Sock, SimpleNamespace]:
    """A Connection over a fake socket; max_behind_s is long so only what a test provokes closes it."""
    clock = Clock()
    monkeypatch.setattr(wsconn_mod, "time", clock)
    options = dict(client_sndbuf_bytes=0, max_frame_bytes=16384, outbox_frames=2, max_behind_s=1000.0,
                   outbox_bytes=1 << 20, requests_per_s=20, request_burst=40, write_timeout_s=10.0,
                   auth="off")
    options.update(cfg)
    server = SimpleNamespace(cfg=SimpleNamespace(**options), hub=Hub(), counters=Counter(),
                             latency=FastHistogram())
    wire = Wire(room)
    sock = Sock(wire, clock)
    conn = Connection(server, sock, 1)
    sock.conn = conn
    return conn, wire, sock, server


def settle(conn: Connection) -> None:
    """Let the writer greenlet run until it has nothing left to do."""
    writer = conn.writer
    if writer is not None:
        writer.join(timeout=30)
    assert conn.writer is None


def gevent_until(check, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.001)


def test_a_partial_write_through_puts_exactly_the_tail_then_the_next_frames_on_the_wire(monkeypatch):
    """The socket takes 3 bytes of a frame: the writer sends exactly the other bytes, then the frame
    queued meanwhile, each byte once, in order; only whole writes count as frames written."""
    conn, wire, _, server = connection(monkeypatch, room=3)
    f1, f2 = ws_frame(b'{"type":"pong","id":1}'), ws_frame(b'{"type":"pong","id":2}')
    conn.push(f1)
    assert bytes(wire.data) == f1[:3] and conn.writer is not None
    conn.push(f2)  # queued behind the tail: no write-through while a tail waits
    assert bytes(wire.data) == f1[:3]
    wire.room = None
    settle(conn)
    assert bytes(wire.data) == f1 + f2
    assert server.counters["frames_written"] == 2
    assert (conn.box.written, conn.box.pos_in, conn.box.pending) == (len(f1 + f2), len(f1 + f2), False)


def test_a_writer_on_a_full_socket_resumes_at_the_exact_byte_it_stopped(monkeypatch):
    """Frames written 7 bytes per wake-up (a slow reader) reach the wire whole and in order."""
    conn, wire, sock, _ = connection(monkeypatch, room=0)
    frames = [ws_frame(b'{"n":%d,"pad":"%s"}' % (i, b"p" * 30)) for i in range(3)]
    for f in frames:
        conn.push(f)  # the socket is full: nothing written through, all queued
    assert not wire.data
    total = len(b"".join(frames))
    while len(wire.data) < total:
        wire.room = 7
        gevent_until(lambda: wire.room == 0 or len(wire.data) == total)
    settle(conn)
    assert bytes(wire.data) == b"".join(frames)
    assert sock.waits == -(-total // 7) - 1  # one wait per refill after the first: it never spun


def test_control_headroom_overflow_mid_frame_finishes_that_frame_then_sends_4008(monkeypatch):
    """While the writer is stuck 20 bytes into a 102-byte frame, replies overflow the outbox at
    max_frames + CONTROL_HEADROOM: the wire then gets exactly the rest of that frame and the 4008
    close frame — nothing queued after it, no partial frame — and the client is counted overflowed."""
    conn, wire, sock, server = connection(monkeypatch, room=10, outbox_frames=2)
    big = ws_frame(b"x" * 100)
    reply = ws_frame(b'{"type":"pong"}')
    conn.push(big)  # 10 bytes written through, the rest queued as the tail
    conn.push(reply)
    wire.room = 10
    gevent_until(lambda: len(wire.data) == 20 and sock.waits == 1)  # the writer waits on a full socket
    for _ in range(2 + CONTROL_HEADROOM):
        conn.push(reply)
    assert not conn.box.overflowed and server.hub.counters.clients_overflowed == 0
    conn.push(reply)  # one past the headroom
    assert conn.box.overflowed and server.hub.counters.clients_overflowed == 1
    wire.room = None
    settle(conn)
    assert bytes(wire.data) == big + close_frame(Close.SLOW_CONSUMER, "client too slow: outbox overflowed")
    assert conn.close_code == Close.SLOW_CONSUMER and sock.shut and conn.box.closed
    assert (socket.SOL_SOCKET, socket.SO_LINGER) not in sock.opts  # graceful: no reset (SO_LINGER 0)


def test_a_client_that_takes_nothing_for_the_write_timeout_is_hung_up_and_counted(monkeypatch):
    """A socket that stays full: after write_timeout_s (10 s, 20 wait slices of 0.5 s on the injected
    clock) the writer gives up, resets the connection (no close frame fits) and counts it."""
    conn, wire, sock, server = connection(monkeypatch, room=0, write_timeout_s=10.0)
    wire.stuck = True
    conn.push(ws_frame(b'{"type":"pong"}'))
    settle(conn)
    assert sock.waits == 20 and not wire.data
    assert sock.shut and sock.opts[(socket.SOL_SOCKET, socket.SO_LINGER)] == ABORT
    assert server.counters["clients_write_timeout"] == 1
    assert server.hub.counters.clients_overflowed == 0 and conn.box.closed


class ProbeClocks:
    """perf_counter and thread_time as shard.loopwatch sees them, moved by the fake sleep."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.perf, self.cpu = 100.0, 5.0
        self.script = list(script)  # per probe: (seconds late, CPU seconds the loop used meanwhile)

    def perf_counter(self) -> float:
        return self.perf

    def thread_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        if not self.script:
            raise StopIteration  # ends the probe loop
        late, cpu = self.script.pop(0)
        self.perf += seconds + late
        self.cpu += cpu


def bucket_counts(values: list[float]) -> list[int]:
    counts = [0] * (len(LAG_BUCKETS_S) + 1)
    for v in values:
        counts[sum(1 for b in LAG_BUCKETS_S if b < v)] += 1
    return counts


def test_loop_lag_counts_every_late_wake_up_and_stall_only_the_part_the_loop_ran(monkeypatch):
    """Four probes: on time, 0.3 s late with no CPU (the process was not running: lag, not stall),
    30 ms late running code (both), 2 s late with 4 ms CPU. Each lands in its own bucket."""
    clocks = ProbeClocks([(0.0005, 0.0005), (0.3, 0.0), (0.03, 0.03), (2.0, 0.004)])
    monkeypatch.setattr(loopwatch_mod, "time", clocks)
    monkeypatch.setattr(loopwatch_mod, "gevent", SimpleNamespace(sleep=clocks.sleep))
    watch = LoopWatch(lambda: 0, 0)
    with pytest.raises(StopIteration):
        watch._probe()
    assert watch.lag.counts == bucket_counts([0.0005, 0.3, 0.03, 2.0])
    assert watch.stall.counts == bucket_counts([0.0005, 0.0, 0.03, 0.004])
    assert watch.lag.counts[-1] == 1 and watch.stall.counts[-1] == 0  # 2 s: +Inf for lag only
    assert watch.max_lag_s == pytest.approx(2.0) and watch.max_stall_s == pytest.approx(0.03)
    assert watch.lag.sum == pytest.approx(2.3305) and PROBE_S == 0.01


def test_gc_pauses_are_timed_in_thread_cpu_and_full_collections_counted(monkeypatch):
    """A 3 ms generation-0 pause and a 300 ms full one: their buckets, the max, one full collection."""
    clocks = ProbeClocks([])
    monkeypatch.setattr(loopwatch_mod, "time", clocks)
    watch = LoopWatch(lambda: 0, 0)
    for gen, pause in ((0, 0.003), (2, 0.3)):
        watch._on_gc("start", {"generation": gen})
        clocks.cpu += pause
        watch._on_gc("stop", {"generation": gen, "collected": 0, "uncollectable": 0})
    assert watch.gc_pause.counts == bucket_counts([0.003, 0.3])
    assert watch.max_gc_pause_s == pytest.approx(0.3) and watch.full_collections == 1


def test_every_real_collection_is_one_pause_observation():
    """With automatic GC off, two explicit collections (one full, one young) are exactly two pauses."""
    watch = LoopWatch(lambda: 0, 0)
    was_enabled = gc.isenabled()
    gc.disable()
    gc.callbacks.append(watch._on_gc)
    try:
        gc.collect()
        gc.collect(0)
    finally:
        gc.callbacks.remove(watch._on_gc)
        if was_enabled:
            gc.enable()
    assert (watch.gc_pause.count, watch.full_collections) == (2, 1)
    assert watch.stats()["gc_pause_counts"] == watch.gc_pause.counts
