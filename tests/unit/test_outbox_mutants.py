"""The outbox's exact rules at their edges: write-through tails, the bounds and their headroom,
when a client is measured, checkpoints, wake-ups and byte accounting. An injected clock throughout."""

from __future__ import annotations

import pytest

from shard.outbox import CONTROL_HEADROOM, CONTROL_HEADROOM_BYTES, MAX_GATE_S, Outbox


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """Counts wake-ups and kernel queries; `unacked_bytes` is what the kernel would report."""

    def __init__(self) -> None:
        self.wakes = 0
        self.queries = 0
        self.unacked_bytes = 0

    def wake(self) -> None:
        self.wakes += 1

    def unacked(self) -> int:
        self.queries += 1
        return self.unacked_bytes


def make(max_frames: int = 100, max_behind_s: float = 64.0, **kw) -> tuple[Outbox, Clock, Probe]:
    """An outbox with no write-through (a busy writer) unless `direct` is given. 64 s: 1 s checkpoints."""
    clock, probe = Clock(), Probe()
    box = Outbox(max_frames, probe.wake, max_behind_s=max_behind_s, clock=clock, unacked=probe.unacked, **kw)
    return box, clock, probe


def test_a_new_outbox_starts_empty_idle_and_derives_its_periods():
    """Defaults: conn 0, 5 s behind (lag 2.5 s, gate 1 s, 64 checkpoints); every counter and flag zero."""
    box = Outbox(10, lambda: None)
    periods = (box.max_behind_s, box.lag_s, box.gate_s, box.check_every_s)
    assert box.conn_id == 0 and periods == (5.0, 2.5, 1.0, 5 / 64)
    state = (box.queued_bytes, box.conflated_since, box.conflations, box.lagging, box.overflowed, box.closed,
             box.pos_in, box.written, box.acked_seen, box.next_check, box.tail, box.oldest_ts_ms, box.busy)
    assert state == (0, 0.0, 0, False, False, False, 0, 0, 0, 0.0, None, 0, False)
    short = Outbox(10, lambda: None, max_behind_s=2.0)
    assert (short.lag_s, short.gate_s) == (1.0, 0.5)
    assert Outbox(10, lambda: None, max_behind_s=100.0).gate_s == MAX_GATE_S


def test_a_closed_or_overflowed_outbox_takes_nothing_and_reports_false():
    """push and check refuse once closed or overflowed, queue nothing and change neither flag."""
    box, _, probe = make()
    box.closed = True
    assert box.push(b"x") is False and box.check() is False
    assert (box.pending, box.overflowed, probe.wakes) == (False, False, 0)
    box, _, probe = make()
    box.overflowed = True
    assert box.push(b"x", "T", 5) is False and box.check() is False
    assert (box.pending, box.closed, box.oldest_ts_ms, probe.wakes) == (False, False, 0, 0)


def test_oldest_timestamp_is_the_first_tick_waiting_and_control_frames_have_none():
    """oldest_ts_ms: 0 for control frames (the default), else the first waiting tick's time, kept."""
    box, _, _ = make()
    box.push(b"ack")
    assert box.oldest_ts_ms == 0
    box.push(b"t1", "A", 5)
    box.push(b"c", None)
    box.push(b"t2", "B", 7)
    assert box.oldest_ts_ms == 5


class Socket:
    """The adapter's write-through: takes `take` bytes of each frame (all when None), records calls."""

    def __init__(self, take: int | None = None) -> None:
        self.take = take
        self.calls: list[tuple[bytes, int]] = []

    def __call__(self, frame: bytes, ts_ms: int) -> int:
        self.calls.append((frame, ts_ms))
        return len(frame) if self.take is None else self.take


def test_write_through_sends_at_once_with_the_tick_time_and_queues_nothing():
    """An idle outbox hands the frame and its timestamp to the socket; all sent: nothing queued, no wake."""
    sock = Socket()
    box, _, probe = make(direct=sock)
    assert box.push(b"hello", "T", 42) is True
    assert sock.calls == [(b"hello", 42)]
    assert (box.pending, box.pos_in, box.written, box.queued_bytes, probe.wakes) == (False, 5, 5, 0, 0)


def test_a_partial_write_through_queues_exactly_the_unsent_tail_first():
    """One byte taken: the other four are queued as the tail, counted, timed, and the writer woken."""
    sock = Socket(take=1)
    box, _, probe = make(direct=sock)
    assert box.push(b"hello", "T", 42) is True
    assert (box.tail, box.queued_bytes, box.pos_in, box.written, box.oldest_ts_ms, probe.wakes) == (
        b"ello", 4, 5, 1, 42, 1)
    box.push(b"next", "T", 43)  # not idle any more: queued behind the tail, not written through
    assert len(sock.calls) == 1
    assert box.take() == ([b"ello", b"next"], True) and box.tail is None and box.queued_bytes == 0


def test_a_write_through_that_sent_nothing_queues_the_whole_frame_as_no_tail():
    """Zero bytes taken: the whole frame is queued as an ordinary frame (nothing of it is on the wire)."""
    box, _, probe = make(direct=Socket(take=0))
    assert box.push(b"hello", "T") is True
    assert (box.tail, box.queued_bytes, box.written, probe.wakes) == (None, 5, 0, 1)
    assert box.take() == ([b"hello"], False)


def test_ticks_conflate_once_queued_bytes_reach_the_byte_bound_exactly():
    """At queued_bytes == max_bytes the next tick is conflated; below it, ticks go to the FIFO."""
    box, _, _ = make(max_bytes=10)
    box.push(b"aaaaa", "A")
    box.push(b"bbbbb", "B")
    assert box.queued_bytes == 10 and not box.conflated
    box.push(b"c", "C")
    assert list(box.frames) == [b"aaaaa", b"bbbbb"] and box.conflated == {"C": b"c"}
    assert box.queued_bytes == 11


def test_control_frames_overflow_exactly_at_the_frame_headroom():
    """Control frames may exceed max_frames by CONTROL_HEADROOM; the next one overflows the client."""
    box, _, probe = make(max_frames=1)
    assert all(box.push(b"c") for _ in range(1 + CONTROL_HEADROOM))
    assert box.overflowed is False
    assert box.push(b"c") is False and box.overflowed is True and len(box.frames) == 1 + CONTROL_HEADROOM
    assert probe.wakes == 2  # once on becoming non-empty, once to close


def test_control_frames_overflow_exactly_at_the_byte_headroom():
    """Control bytes may exceed max_bytes by CONTROL_HEADROOM_BYTES; at that level the next one overflows."""
    box, _, _ = make(max_bytes=10)
    assert box.push(b"x" * (10 + CONTROL_HEADROOM_BYTES - 1)) is True
    assert box.push(b"y") is True  # 1 byte below the headroom before this one
    assert box.push(b"z") is False and box.overflowed is True


def test_pushes_measure_only_at_the_checkpoint_period_and_overflow_just_past_max_behind():
    """Measured at a push once check_every_s has passed (not before); stalled 64 s is kept, 64.5 s is not."""
    box, clock, probe = make()  # 64 s behind: checks every 1 s, lagging past 32 s
    box.push(b"c0")  # t=0: nothing is ever acknowledged from here on
    clock.now = 64.0
    assert box.push(b"c1") is True and box.lagging is True and probe.queries == 1
    clock.now = 64.5  # stalled 64.5 s, but the next measure is due at 65.0
    assert box.push(b"c2") is True and probe.queries == 1
    clock.now = 65.0
    assert box.push(b"c3") is False and box.overflowed is True and probe.queries == 2


def test_the_first_push_is_measured_at_once():
    """The first measure is due at construction: a client stalled past max_behind_s is caught at t=0.5."""
    box, clock, _ = make(max_behind_s=0.25)
    box.push(b"c0")
    clock.now = 0.5
    assert box.push(b"c1") is False and box.overflowed is True


def test_a_stall_counts_from_construction_when_nothing_was_ever_acknowledged():
    """Nothing written or acknowledged: the stall runs from the first byte, not from the first measure."""
    box, _, _ = make()
    box.push(b"c0")
    assert box.stalled_s(3.0) == 3.0
    assert box.stalled_s(7.0) == 7.0


def test_the_kernel_is_asked_only_once_the_oldest_checkpoint_is_older_than_the_gate():
    """At exactly gate_s the client is not measured (it cannot be stalled longer); just past it, it is."""
    box, clock, probe = make(max_behind_s=4.0)  # gate 1 s, checks every 1/16 s
    box.push(b"c0")
    clock.now = 1.0
    assert box.check() is True and probe.queries == 0 and box.lagging is False
    clock.now = 1.0625
    assert box.check() is True and probe.queries == 1


def test_lagging_starts_just_past_half_of_max_behind_and_ends_with_fresh_data():
    """Stalled exactly lag_s: not lagging; a moment more: lagging; everything acknowledged: not lagging."""
    box, clock, probe = make()
    box.push(b"c0")
    box.wrote(2)
    probe.unacked_bytes = 2
    clock.now = 32.0
    box.check()
    assert box.lagging is False
    clock.now = 33.0
    box.check()
    assert box.lagging is True
    probe.unacked_bytes = 0  # the client read it all
    clock.now = 34.0
    box.check()
    assert box.lagging is False and list(box.marks) == []
    box.push(b"c1")  # a fresh checkpoint, within the gate: lagging stays off without a query
    clock.now = 34.5
    box.check()
    assert box.lagging is False and probe.queries == 3


def test_a_conflated_client_overflows_just_past_max_behind_not_at_it():
    """Conflated for exactly max_behind_s: kept; any longer: overflowed, even while its acks progress."""
    box, clock, probe = make(max_frames=1)
    box.push(b"c0")
    box.push(b"t1", "T")  # the FIFO is full: conflated from t=0
    box.wrote(2)
    for t in (20.0, 40.0, 64.0):  # the client acknowledges a byte now and then: never stalled
        clock.now = t
        probe.unacked_bytes = 2 - int(t // 40)
        assert box.check() is True
    clock.now = 64.25
    assert box.check() is False and box.overflowed is True


def test_checkpoints_are_taken_at_most_once_per_period_including_its_boundary():
    """Positions are checkpointed at t=0, exactly one period later, then at the next push past the period."""
    box, clock, _ = make()
    for t in (0.0, 0.5, 1.0, 1.5, 2.5):
        clock.now = t
        box.push(b"xx")
    assert list(box.marks) == [(0, 0.0), (4, 1.0), (8, 2.5)]


def test_acknowledged_checkpoints_are_dropped_up_to_the_acknowledged_position():
    """A measure drops every checkpoint whose successor is acknowledged, including one exactly at it."""
    box, clock, probe = make()
    for t in (0.0, 1.0, 2.0):
        clock.now = t
        box.push(b"x" * 10)
    box.wrote(30)
    probe.unacked_bytes = 20  # positions 0-9 acknowledged: the checkpoint at 10 is where the wait starts
    assert box.stalled_s(2.5) == 0.0
    assert list(box.marks) == [(10, 1.0), (20, 2.0)]
    probe.unacked_bytes = 10
    box.stalled_s(3.0)
    assert list(box.marks) == [(20, 2.0)]


def test_conflation_wakes_the_writer_only_when_the_outbox_was_empty():
    """Conflating into an empty outbox wakes the writer once; more conflation, or behind a FIFO, does not."""
    box, clock, probe = make(max_frames=1)
    box.push(b"c0")
    assert probe.wakes == 1
    box.push(b"t1", "A")  # FIFO full: conflated behind it, no second wake
    assert probe.wakes == 1 and box.conflated == {"A": b"t1"}
    box.take()
    box.take()  # drained: the client stays unacknowledging
    clock.now = 40.0  # stalled 40 s > lag 32 s: the next tick is conflated though the FIFO is empty
    box.push(b"t2", "A")
    assert box.lagging is True and box.conflated == {"A": b"t2"} and probe.wakes == 2
    box.push(b"t3", "B")
    box.push(b"t4", "A")
    assert probe.wakes == 2 and box.conflations == 1 and box.queued_bytes == 4


def test_byte_accounting_through_forget_take_and_discard():
    """queued_bytes and pos_in follow every frame in and out exactly; discard leaves nothing to send."""
    box, _, _ = make(max_frames=2)
    box.push(b"aaa")
    box.push(b"bbbb")
    box.push(b"T1", "T")
    box.push(b"U12", "U")
    assert box.queued_bytes == 12 and box.pos_in == 7
    box.forget("T")
    box.forget("nothing")
    assert box.queued_bytes == 10 and box.conflated == {"U": b"U12"}
    assert box.take() == ([b"aaa", b"bbbb"], False) and box.queued_bytes == 3
    assert box.take() == ([b"U12"], False) and box.queued_bytes == 0 and box.pos_in == 10
    assert box.take() == ([], False)
    box.push(b"zz")
    assert box.discard() == b"" and box.queued_bytes == 0 and not box.pending


def test_take_stops_once_it_has_max_bytes():
    """take(max_bytes) pops frames while it has less than max_bytes: 5+5 for 10, not a third frame."""
    box, _, _ = make()
    for f in (b"11111", b"22222", b"33333"):
        box.push(f)
    assert box.take(10) == ([b"11111", b"22222"], False) and box.queued_bytes == 5
    assert box.drain() == (b"33333", 1)
    assert box.drain() == (b"", 0)


@pytest.mark.parametrize(("sent", "rest"), [(0, b""), (3, b"me")])
def test_discard_returns_only_a_partly_written_frames_rest(sent, rest):
    """Closing returns the tail a partial write-through left (the stream must finish that frame), else b""."""
    box, _, _ = make(direct=Socket(take=sent))
    box.push(b"frame")
    box.push(b"more")
    assert box.discard() == rest and box.tail is None
