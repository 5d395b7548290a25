"""Hub and ingest core at their edges: exact counters over several calls, timestamps handed to the
outboxes, the fan-out's yield schedule, and subscription lists with tokens already (un)subscribed."""

from __future__ import annotations

from common.records import Record
from shard.hub import Hub
from shard.ingest import IngestCore
from shard.outbox import Outbox
from shard.protocol import snapshot_frame, tick_frame


class Socket:
    """An idle client's socket: takes every frame whole and records its timestamp."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def __call__(self, frame: bytes, ts_ms) -> int:
        self.sent.append((frame, ts_ms))
        return len(frame)


def box(max_frames: int = 1000, direct=None) -> Outbox:
    return Outbox(max_frames, lambda: None, clock=lambda: 0.0, direct=direct)


def test_subscribing_a_list_goes_past_tokens_already_held():
    """A token the client already has is skipped, and the tokens after it are still subscribed."""
    events: list = []
    hub = Hub(on_first=lambda t: events.append(("first", t)))
    b = box()
    hub.subscribe(b, ["A"])
    hub.subscribe(b, ["A", "B", "C"])
    assert b.tokens == {"A", "B", "C"} and set(hub.subs) == {"A", "B", "C"}
    assert events == [("first", "A"), ("first", "B"), ("first", "C")]


def test_unsubscribing_a_list_goes_past_tokens_not_held():
    """Tokens the client does not hold are skipped; the rest are dropped from the client and the hub."""
    events: list = []
    hub = Hub(on_last=lambda t: events.append(("last", t)))
    b = box()
    hub.subscribe(b, ["A", "B"])
    hub.unsubscribe(b, ["X", "A", "Y", "B"])
    assert b.tokens == set() and hub.subs == {} and events == [("last", "A"), ("last", "B")]


def test_remove_marks_the_client_closed():
    """A removed client is closed (so a fan-out in progress skips it) and holds no token."""
    hub = Hub()
    b = box()
    hub.subscribe(b, ["A"])
    hub.remove(b)
    assert b.closed is True and b.tokens == set() and hub.subscription_count == 0


def test_publish_hands_token_and_timestamp_to_each_outbox():
    """publish passes the tick's time (0 by default) and its token, so a client behind conflates it."""
    hub = Hub()
    sock = Socket()
    live, behind = box(direct=sock), box(max_frames=1)
    hub.subscribe(live, ["T"])
    hub.subscribe(behind, ["T"])
    hub.publish("T", b"f1")
    hub.publish("T", b"f2", 77)
    hub.publish("T", b"f3", 78)
    assert sock.sent == [(b"f1", 0), (b"f2", 77), (b"f3", 78)]
    assert list(behind.frames) == [b"f1"] and behind.conflated == {"T": b"f3"}
    assert behind.oldest_ts_ms == 77


def test_publish_counters_add_up_over_calls():
    """frames_queued and clients_overflowed accumulate across publishes; nothing else is touched."""
    now = [0.0]
    hub = Hub()
    boxes = [Outbox(1, lambda: None, clock=lambda: now[0], max_behind_s=1.0) for _ in range(2)]
    for b in boxes:
        hub.subscribe(b, ["T"])
    hub.publish("T", b"1")
    hub.publish("T", b"2")
    assert hub.counters.frames_queued == 4 and hub.counters.clients_overflowed == 0
    now[0] = 2.0  # nothing was ever written: both stalled past max_behind_s
    assert len(hub.publish("T", b"3")) == 2
    assert hub.counters.clients_overflowed == 2 and hub.counters.frames_queued == 4
    assert hub.publish("T", b"4") == [] and hub.counters.clients_overflowed == 2
    assert hub.publish("nobody", b"5") == [] and hub.counters.frames_queued == 4


def test_fan_out_skips_closed_clients_and_reaches_every_other():
    """Closed and overflowed subscribers are passed over, never ending the fan-out early."""
    hub = Hub()
    boxes = [box() for _ in range(30)]
    for i, b in enumerate(boxes):
        hub.subscribe(b, ["T"])
        b.closed = i % 3 == 0
        b.overflowed = i % 3 == 1
    hub.publish("T", b"x")
    assert [len(b.frames) for b in boxes] == [0, 0, 1] * 10 and hub.counters.frames_queued == 10


def test_a_large_fan_out_yields_every_so_many_frames():
    """More subscribers than pause_every_frames: a pause after each such run (here after 3 and 7 pushes)."""
    hub = Hub(pause_every_frames=4)
    boxes = [box() for _ in range(9)]
    seen: list[int] = []
    hub.pause = lambda: seen.append(sum(len(b.frames) for b in boxes))
    for b in boxes:
        hub.subscribe(b, ["T"])
    hub.publish("T", b"x")
    assert seen == [3, 7] and hub.counters.frames_queued == 9


def test_a_fan_out_no_larger_than_the_pause_period_never_yields():
    """Exactly pause_every_frames subscribers is one run: no pause."""
    hub = Hub(pause_every_frames=4)
    paused: list[int] = []
    hub.pause = lambda: paused.append(1)
    for _ in range(4):
        hub.subscribe(box(), ["T"])
    hub.publish("T", b"x")
    assert paused == [] and hub.counters.frames_queued == 4


def test_clients_leaving_while_a_large_fan_out_yields_do_not_break_it():
    """A pause may run code that unsubscribes clients: the fan-out goes on over its own copy."""
    hub = Hub(pause_every_frames=2)
    boxes = [box() for _ in range(6)]
    for b in boxes:
        hub.subscribe(b, ["T"])
    hub.pause = lambda: hub.remove(next(b for b in boxes if b.frames and not b.closed))
    hub.publish("T", b"x")  # pauses before the 2nd, 4th and 6th push: each removes a client served
    assert hub.counters.frames_queued == 6 and len(hub.subs["T"]) == 3


# -- ingest ----------------------------------------------------------------------------------


def test_ingest_counts_batches_and_records_without_subscribers_exactly():
    """Each handle() is one batch; each record of a token nobody holds is counted once."""
    hub = Hub()
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    assert core.batches == 0
    core.handle([Record("A", b"1"), Record("B", b"2")])
    core.handle([Record("C", b"3")])
    assert core.batches == 2
    assert (hub.counters.records_no_subscriber, hub.counters.records_received) == (3, 3)


def test_ingest_hands_ticks_their_time_and_snapshots_none():
    """A tick reaches the socket with its Kafka time; a snapshot (an old value) with 0."""
    hub = Hub()
    sock = Socket()
    hub.subscribe(box(direct=sock), ["A"])
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    snap = Record("A", b"{}", 0, 1, 999, snapshot=True)
    tick = Record("A", b"{}", 0, 2, 1234)
    core.handle([snap, tick])
    assert sock.sent == [(snapshot_frame(snap), 0), (tick_frame(tick), 1234)]


def test_ingest_yields_every_256_records_by_default():
    """The default pause period is 256 fanned-out records."""
    hub = Hub()
    hub.subscribe(box(), ["A"])
    paused: list[int] = []
    core = IngestCore(hub, on_overflow=lambda boxes: None, pause=lambda: paused.append(1))
    core.handle([Record("A", b"1", 0, i) for i in range(1, 256)])
    assert paused == []
    core.handle([Record("A", b"1", 0, i) for i in range(256, 512)])
    assert paused == [1]


def test_ingest_yields_at_exactly_pause_every_records_or_frames():
    """A pause comes when either count reaches its period exactly, counted from the batch's start."""
    hub = Hub(pause_every_frames=4)
    boxes = [box(), box()]
    for b in boxes:
        hub.subscribe(b, ["A"])
    paused: list[int] = []
    core = IngestCore(hub, on_overflow=lambda boxes: None, pause=lambda: paused.append(1), pause_every=3)
    core.handle([Record("A", b"1", 0, 1)])  # 2 frames
    assert paused == []
    core.handle([Record("A", b"1", 0, 2), Record("A", b"1", 0, 3)])  # 4 frames in this batch
    assert paused == [1]
    hub.unsubscribe(boxes[1], ["A"])
    core.handle([Record("A", b"1", 0, 4), Record("A", b"1", 0, 5)])  # 2 records, 2 frames: no pause
    assert paused == [1]
    core.handle([Record("A", b"1", 0, o) for o in (6, 7, 8)])  # 3 records
    assert paused == [1, 1]


def test_out_of_band_counters_add_up():
    """Gaps closed, stale snapshots and resyncs delivered accumulate over records."""
    hub = Hub()
    told: list = []
    b = box()
    hub.subscribe(b, ["A", "B"])
    core = IngestCore(hub, on_overflow=lambda boxes: None, on_gap=told.extend)
    core.handle([Record("A", b"", gap=True), Record("B", b"", gap=True)])
    core.handle([Record("A", b"{}", 0, 10), Record("A", b"{}", 0, 20, resync=True),
                 Record("A", b"{}", 0, 30, resync=True)])
    core.handle([Record("A", b"{}", 0, 5, snapshot=True), Record("A", b"{}", 0, 6, snapshot=True)])
    c = hub.counters
    assert (c.gaps_closed, c.resyncs_delivered, c.snapshots_stale, c.snapshots_received) == (2, 2, 2, 4)
    assert told == [b, b]
