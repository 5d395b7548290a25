"""Hub fan-out and ingest core: bytes in, bytes out, no sockets."""

from common.records import Record
from shard.hub import Hub
from shard.ingest import IngestCore
from shard.outbox import Outbox
from shard.protocol import snapshot_frame, tick_frame


def _hub():
    events = []
    hub = Hub(on_first=lambda t: events.append(("first", t)),
              on_last=lambda t: events.append(("last", t)))
    return hub, events


def _box(max_frames=10, clock=None, max_behind_s=5.0):
    wakes = []
    box = Outbox(max_frames, lambda: wakes.append(1), max_behind_s=max_behind_s,
                 clock=clock or (lambda: 0.0))
    return box, wakes


def test_first_and_last_subscriber_callbacks():
    """on_first fires once per token for its first subscriber, on_last after its last leaves."""
    hub, events = _hub()
    a, _ = _box()
    b, _ = _box()
    hub.subscribe(a, ["T"])
    hub.subscribe(b, ["T"])
    hub.subscribe(a, ["T"])
    assert events == [("first", "T")]
    hub.unsubscribe(a, ["T"])
    assert events == [("first", "T")]
    hub.remove(b)
    assert events == [("first", "T"), ("last", "T")]
    assert "T" not in hub.subs


def test_publish_shares_one_frame_object():
    """Every subscriber's queue holds the very same bytes object: encoded once."""
    hub, _ = _hub()
    boxes = [_box()[0] for _ in range(3)]
    for box in boxes:
        hub.subscribe(box, ["T"])
    frame = tick_frame(Record("T", b'{"p":1}'))
    assert hub.publish("T", frame) == []
    assert all(box.frames[0] is frame for box in boxes)
    assert hub.counters.frames_queued == 3


def test_client_behind_gets_newest_value_per_token_in_order():
    """Past max_frames a client's ticks are conflated: newest per token, after the queued ones."""
    box, _ = _box(max_frames=2)
    for i in range(6):
        assert box.push(f"A{i}".encode(), "A")
        assert box.push(f"B{i}".encode(), "B")
    assert list(box.frames) == [b"A0", b"B0"]
    assert box.conflated == {"A": b"A5", "B": b"B5"}
    assert box.conflations == 8
    assert box.drain() == (b"A0B0", 2)
    assert box.push(b"A6", "A")  # still behind: conflated until everything is flushed
    assert box.drain() == (b"A6B5", 2)
    assert not box.pending
    assert box.push(b"A7", "A") and list(box.frames) == [b"A7"]  # back to plain FIFO


def test_client_behind_too_long_overflows_without_blocking_others():
    """A client conflated for longer than max_behind_s is overflowed; others get every frame."""
    now = [0.0]
    slow, _ = _box(max_frames=2, clock=lambda: now[0], max_behind_s=1.0)
    fast, _ = _box(max_frames=100)
    hub, _ = _hub()
    hub.subscribe(slow, ["T"])
    hub.subscribe(fast, ["T"])
    overflowed = []
    for i in range(8):
        now[0] = i * 0.4  # behind from t=0.8 (third frame); past 1 s behind at t=2.0
        overflowed += hub.publish("T", str(i).encode())
    assert overflowed == [slow] and slow.overflowed
    assert [f.decode() for f in fast.frames] == [str(i) for i in range(8)]


def test_unsubscribe_drops_conflated_tick():
    """No conflated tick of a token is written after the client unsubscribed from it."""
    hub, _ = _hub()
    box, _ = _box(max_frames=1)
    hub.subscribe(box, ["A", "B"])
    hub.publish("A", b"a1")
    hub.publish("B", b"b1")
    hub.unsubscribe(box, ["B"])
    assert box.conflated == {}


def test_last_value_snapshot_for_later_subscribers():
    """Ticks keep each subscribed token's last value; later subscribers get it as a snapshot."""
    hub, _ = _hub()
    box, _ = _box(100)
    hub.subscribe(box, ["A"])
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    core.handle([Record("A", b'{"p":1}', 0, 10), Record("A", b'{"p":2}', 0, 11)])
    assert hub.snapshot("A") == snapshot_frame(Record("A", b'{"p":2}', 0, 11))
    assert hub.snapshot("B") is None
    hub.remove(box)
    assert hub.snapshot("A") is None  # forgotten with its last subscriber


def test_dispatcher_snapshot_is_delivered_once_and_never_goes_backwards():
    """A snapshot record reaches subscribers unless the shard already has a value as new."""
    hub, _ = _hub()
    box, _ = _box(100)
    hub.subscribe(box, ["A"])
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    core.handle([Record("A", b"5", 0, 5, snapshot=True)])
    core.handle([Record("A", b"6", 0, 6)])
    core.handle([Record("A", b"5", 0, 5, snapshot=True), Record("Z", b"1", 0, 1, snapshot=True)])
    assert list(box.frames) == [snapshot_frame(Record("A", b"5", 0, 5)),
                                tick_frame(Record("A", b"6", 0, 6))]
    assert hub.counters.snapshots_received == 3 and hub.counters.snapshots_stale == 1
    assert hub.counters.records_received == 1


def test_outbox_wakes_only_when_becoming_non_empty_and_drain_joins():
    """The writer is woken on the empty→non-empty edge; drain returns frames in order."""
    box, wakes = _box()
    box.push(b"a", "T")
    box.push(b"b")
    assert len(wakes) == 1
    assert box.drain() == (b"ab", 2)
    assert box.drain() == (b"", 0)


def test_ingest_skips_tokens_without_subscribers_and_keeps_order():
    """Records for unsubscribed tokens are counted and dropped; others arrive in order."""
    hub, _ = _hub()
    box, _ = _box(100)
    hub.subscribe(box, ["A"])
    pauses = []
    core = IngestCore(hub, on_overflow=lambda boxes: None, pause=lambda: pauses.append(1),
                      pause_every=2)
    recs = [Record("A", b"1", 0, 1), Record("B", b"9", 0, 2), Record("A", b"2", 0, 3),
            Record("A", b"3", 0, 4)]
    core.handle(recs)
    assert hub.counters.records_received == 4
    assert hub.counters.records_no_subscriber == 1
    assert list(box.frames) == [tick_frame(recs[0]), tick_frame(recs[2]), tick_frame(recs[3])]
    assert len(pauses) == 1


def test_ingest_reports_overflowed_clients():
    """The ingest core hands overflowed clients to its callback so the adapter can close them."""
    now = [0.0]
    hub, _ = _hub()
    box, _ = _box(1, clock=lambda: now[0], max_behind_s=1.0)
    hub.subscribe(box, ["A"])
    reported = []
    core = IngestCore(hub, on_overflow=reported.extend)
    core.handle([Record("A", b"1", 0, 1), Record("A", b"2", 0, 2)])
    now[0] = 2.0
    core.handle([Record("A", b"3", 0, 3)])
    assert reported == [box]


def _subscribed(*tokens):
    hub, _ = _hub()
    box, _ = _box(1000)
    hub.subscribe(box, list(tokens))
    return hub, box


def test_redelivered_records_never_reach_clients_twice():
    """A record at or behind a token's delivered position (a resent batch, a replay) is dropped."""
    hub, box = _subscribed("A", "B")
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    first = [Record("A", b"1", 0, 10), Record("B", b"1", 0, 11), Record("A", b"2", 0, 12)]
    core.handle(first)
    core.handle([*first, Record("A", b"3", 0, 13)])  # a resent batch, then something new
    core.handle([Record("B", b"0", 0, 9)])  # an old record replayed after a failover
    assert list(box.frames) == [*map(tick_frame, first), tick_frame(Record("A", b"3", 0, 13))]
    assert hub.counters.duplicates_dropped == 4


def test_offsets_of_another_partition_start_afresh():
    """Positions compare within a partition only: a token moved to a new partition is not dropped."""
    hub, box = _subscribed("A")
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    core.handle([Record("A", b"1", 0, 50), Record("A", b"2", 1, 3)])
    assert len(box.frames) == 2 and hub.counters.duplicates_dropped == 0


def test_resync_replaces_missed_ticks_and_is_marked():
    """A dispatcher resync newer than what the shard delivered goes out marked resync; older ones not."""
    hub, box = _subscribed("A")
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    core.handle([Record("A", b"1", 0, 1)])
    latest = Record("A", b"9", 0, 9, resync=True)
    core.handle([latest, Record("A", b"5", 0, 5), Record("A", b"9", 0, 9)])  # queued ticks follow
    assert list(box.frames) == [tick_frame(Record("A", b"1", 0, 1)), snapshot_frame(latest, True)]
    assert hub.counters.resyncs_delivered == 1 and hub.counters.duplicates_dropped == 2


def test_snapshot_newer_than_a_delivered_tick_is_a_resync():
    """A route-join snapshot that supersedes a delivered tick means ticks were missed: marked resync."""
    hub, box = _subscribed("A")
    core = IngestCore(hub, on_overflow=lambda boxes: None)
    core.handle([Record("A", b"1", 0, 1), Record("A", b"4", 0, 4, snapshot=True)])
    assert list(box.frames)[1] == snapshot_frame(Record("A", b"4", 0, 4), resync=True)


def test_gap_marker_hands_subscribers_to_the_gap_callback():
    """A gap (records lost, no value to resync) reports the token's subscribers, nobody else."""
    hub, box = _subscribed("A")
    other, _ = _box(10)
    hub.subscribe(other, ["B"])
    told = []
    core = IngestCore(hub, on_overflow=lambda boxes: None, on_gap=told.extend)
    core.handle([Record("A", b"", gap=True), Record("Z", b"", gap=True)])
    assert told == [box] and hub.counters.gaps_closed == 1 and not box.frames
