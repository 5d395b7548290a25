"""The outbox judges a slow client by time at any tick rate: a simulated socket, an injected clock."""

from __future__ import annotations

import random

import pytest

from shard.outbox import CONTROL_HEADROOM_BYTES, Outbox, frame_end


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Pipe:
    """A TCP path: our send buffer (`snd` bytes, unacknowledged) then the client's receive buffer.

    Bytes that reach the receive buffer count as acknowledged; the client
    empties it only by `read`. Everything sent is kept in `stream`.
    """

    def __init__(self, snd: int, rcv: int) -> None:
        self.snd, self.rcv = snd, rcv
        self.in_snd = self.in_rcv = 0
        self.stream = bytearray()
        self.unacked_calls = 0

    def send(self, data: bytes, ts_ms: int = 0) -> int:
        n = min(len(data), self.snd - self.in_snd)
        self.stream += data[:n]
        self.in_snd += n
        self._flow()
        return n

    def read(self, nbytes: int) -> None:
        self.in_rcv -= min(self.in_rcv, nbytes)
        self._flow()

    def unacked(self) -> int:
        self.unacked_calls += 1
        return self.in_snd

    def _flow(self) -> None:
        n = min(self.in_snd, self.rcv - self.in_rcv)
        self.in_snd -= n
        self.in_rcv += n


class Writer:
    """The adapter's writer greenlet, one step at a time: drain the outbox while the pipe takes it."""

    def __init__(self, box: Outbox, pipe: Pipe, always_busy: bool = False) -> None:
        self.box, self.pipe, self.always_busy = box, pipe, always_busy
        self.chunk = b""
        box.busy = always_busy

    def step(self) -> None:
        box = self.box
        while True:
            if not self.chunk:
                if not box.pending:
                    box.busy = self.always_busy
                    return
                box.busy = True
                frames, _ = box.take()
                self.chunk = b"".join(frames)
            n = self.pipe.send(self.chunk)
            box.wrote(n)
            self.chunk = self.chunk[n:]
            if self.chunk:
                return  # the socket is full


def _wired(max_behind_s: float, snd: int = 16384, rcv: int = 4096, **kw) -> tuple[Outbox, Pipe, Clock]:
    clock, pipe = Clock(), Pipe(snd, rcv)
    box = Outbox(kw.pop("max_frames", 100_000), lambda: None, max_behind_s=max_behind_s, clock=clock,
                 direct=pipe.send, unacked=pipe.unacked, **kw)
    return box, pipe, clock


def test_bytes_bound_starts_conflation_before_the_frame_bound():
    """Queued bytes reaching max_bytes conflate ticks though far fewer than max_frames wait."""
    box = Outbox(1000, lambda: None, max_bytes=1000, clock=lambda: 0.0)
    for i in range(10):
        assert box.push(b"%c%03d" % (65 + i % 2, i) + b"." * 296, "AB"[i % 2])
    assert len(box.frames) == 4 and box.queued_bytes >= 1000  # 4 x 300 bytes, then conflation
    assert sorted(box.conflated) == ["A", "B"] and box.conflated["B"].startswith(b"B009")
    assert box.push(b"x" * CONTROL_HEADROOM_BYTES)  # replies still queue, within the headroom...
    assert not box.push(b"ack") and box.overflowed  # ...and no further


@pytest.mark.parametrize("frame_bytes,interval_s,queues", [(1000, 0.5, False), (1000, 0.05, True),
                                                            (1000, 0.0001, True)])
def test_stopped_client_overflows_max_behind_after_its_buffer_fills_at_any_rate(frame_bytes, interval_s,
                                                                                queues):
    """2 KB/s, 20 KB/s or 10 MB/s: a client that stops reading is overflowed on time, conflated first.

    On time: max_behind_s after its receive buffer filled, plus at most the gate (the kernel
    is asked about a client only that often) and one push interval. At 2 KB/s its ticks all
    fit in the socket's send buffer: nothing waits here to conflate.
    """
    max_behind_s = 5.0
    box, pipe, clock = _wired(max_behind_s, max_bytes=256 << 10)
    writer = Writer(box, pipe)
    full_at = conflated_at = None
    i = 0
    while box.push(b"%08d" % i + b"." * (frame_bytes - 8), "T"):
        writer.step()
        if full_at is None and pipe.in_rcv == pipe.rcv:
            full_at = clock.now  # from here on nothing the shard sends is acknowledged
        if conflated_at is None and box.conflated:
            conflated_at = clock.now
        assert box.queued_bytes <= (256 << 10) + CONTROL_HEADROOM_BYTES
        i += 1
        clock.now = i * interval_s
        assert clock.now < 60, "never overflowed"
    behind = clock.now - full_at
    assert max_behind_s < behind <= max_behind_s + box.gate_s + interval_s + box.check_every_s
    assert (conflated_at is not None and conflated_at < clock.now) is queues


def test_client_that_keeps_up_at_a_high_rate_with_a_busy_writer_never_overflows():
    """10 MB/s through a writer that never idles: no conflation, no overflow, and the kernel asked rarely."""
    box, pipe, clock = _wired(0.5, snd=131072, rcv=65536, max_frames=2048, max_bytes=1 << 20)
    writer = Writer(box, pipe, always_busy=True)
    frame = b"t" * 1000
    pushes = 0
    for ms in range(20_000):  # 20 s
        clock.now = ms / 1000
        for _ in range(10):
            assert box.push(frame, "T")
            pushes += 1
        writer.step()
        pipe.read(12_000)
    assert not box.overflowed and box.conflations == 0 and not box.conflated
    assert pipe.unacked_calls <= 20 / box.gate_s + 1 and pushes == 200_000  # once per gate_s


def test_client_reading_a_big_burst_slowly_is_neither_conflated_nor_closed():
    """12 MB at once, read at 1 MB/s for 12 s (over max_behind_s): it acknowledges, so it is not behind."""
    box, pipe, clock = _wired(5.0, snd=131072, rcv=131072, max_frames=2048)
    writer = Writer(box, pipe)
    for i in range(24):
        assert box.push(b"%04d" % i + b"b" * (512 * 1024 - 4), "BIG")
    for ms in range(14_000):
        clock.now = ms / 1000
        writer.step()
        pipe.read(1000)
        assert box.check()
    pipe.read(1 << 30)
    assert not box.overflowed and box.conflations == 0 and not box.pending
    assert len(pipe.stream) == 24 * 512 * 1024 and pipe.stream[-512 * 1024:].startswith(b"0023")


def test_client_briefly_behind_is_conflated_in_order_and_stays():
    """A client that pauses 2 s gets the newest value per token, each token in order, and stays."""
    box, pipe, clock = _wired(5.0, snd=2048, rcv=1024, max_frames=200)
    writer = Writer(box, pipe)
    rng = random.Random(7)
    tokens = ["A", "B", "C"]
    seq = dict.fromkeys(tokens, 0)
    for step in range(8000):  # 8 s of 1 ms steps; the client reads nothing between 2 s and 4 s
        clock.now = step / 1000
        token = rng.choice(tokens)
        seq[token] += 1
        assert box.push(b"%s%07d|" % (token.encode(), seq[token]), token)
        writer.step()
        if not 2000 <= step < 4000:
            pipe.read(rng.randrange(0, 40_000))
    pipe.read(1 << 30)
    writer.step()
    pipe.read(1 << 30)
    assert not box.overflowed and box.conflations > 0 and not box.pending
    got: dict[str, list[int]] = {t: [] for t in tokens}
    for frame in bytes(pipe.stream).split(b"|")[:-1]:  # frames arrive whole, never interleaved
        got[frame[:1].decode()].append(int(frame[1:]))
    for t in tokens:
        assert got[t] == sorted(set(got[t])) and got[t][-1] == seq[t]  # in order, ending newest
    assert sum(map(len, got.values())) < sum(seq.values())  # stale values were skipped


def test_quiet_client_is_measured_without_any_push():
    """With no new tick, check() still finds the client stalled for max_behind_s and overflows."""
    box, _, clock = _wired(2.0, rcv=100)
    assert box.push(b"x" * 500, "T")  # written through: 100 bytes acknowledged, 400 not
    clock.now = 1.0
    assert box.check()  # first sees the 100 bytes acknowledged: counted as progress just now
    clock.now = 2.9
    assert box.check() and not box.overflowed
    clock.now = 3.1
    assert not box.check() and box.overflowed


def test_client_that_read_everything_is_not_behind_however_old_its_last_tick():
    """Acknowledged data has no age: a tick an hour ago, all read, is not behind."""
    box, _, clock = _wired(2.0)
    assert box.push(b"x" * 500, "T")
    clock.now = 3600
    assert box.check() and box.stalled_s(clock.now) == 0
    assert box.push(b"y" * 500, "T") and not box.overflowed


def test_overflow_mid_frame_leaves_the_stream_at_a_frame_boundary():
    """The writer finishes the frame it is inside, including a written-through frame's queued rest."""
    frames = [b"aaaa", b"bbbb", b"cc"]
    assert frame_end(frames, 0, False) == 0  # nothing started: stop here
    assert frame_end(frames, 2, False) == 4  # inside the first: finish it
    assert frame_end(frames, 4, False) == 4  # exactly between two
    assert frame_end(frames, 5, False) == 8
    assert frame_end(frames, 0, True) == 4  # the first is the rest of a frame already begun
    for overflow_first in (False, True):
        box, _, _ = _wired(5.0, snd=3, rcv=0)
        assert box.push(b"12345678", "T")  # 3 bytes written through, the rest queued as a tail
        assert box.push(b"next", "T")
        if overflow_first:  # on overflow before the writer ran, the tail still goes out
            assert box.discard() == b"45678" and not box.pending
        else:
            assert box.take() == ([b"45678", b"next"], True)


def test_client_reading_far_slower_than_its_ticks_is_closed_once_conflated_too_long():
    """Reading 10% of its ticks it is never stalled, but cannot flush its queue within max_behind_s."""
    box, pipe, clock = _wired(5.0, snd=16384, rcv=16384, max_frames=2048)
    writer = Writer(box, pipe)
    ms = 0
    while box.push(b"s" * 1000, "T"):
        writer.step()
        pipe.read(100)
        ms += 1
        clock.now = ms / 1000
        assert ms < 60_000, "never overflowed"
    assert box.conflations > 0 and box.stalled_s(clock.now) < 1
    assert box.max_behind_s < clock.now - box.conflated_since < box.max_behind_s + 0.1
