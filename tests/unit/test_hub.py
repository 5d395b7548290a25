"""Hub fan-out and ingest core: bytes in, bytes out, no sockets."""

from common.records import Record
from shard.hub import Hub, Outbox
from shard.ingest import IngestCore
from shard.protocol import tick_frame


def _hub():
    events = []
    hub = Hub(on_first=lambda t: events.append(("first", t)),
              on_last=lambda t: events.append(("last", t)))
    return hub, events


def _box(max_frames=10):
    wakes = []
    box = Outbox(max_frames, lambda: wakes.append(1))
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
    assert not hub.has_subscribers("T")


def test_publish_shares_one_frame_object():
    """Every subscriber's queue holds the very same bytes object: encoded once."""
    hub, _ = _hub()
    boxes = [_box()[0] for _ in range(3)]
    for box in boxes:
        hub.subscribe(box, ["T"])
    frame = tick_frame("T", b'{"p":1}')
    assert hub.publish("T", frame) == []
    assert all(box.frames[0] is frame for box in boxes)
    assert hub.counters.frames_queued == 3


def test_slow_client_overflows_without_blocking_others():
    """A full outbox is reported once as overflowed while other subscribers still get every frame."""
    hub, _ = _hub()
    slow, _ = _box(max_frames=2)
    fast, _ = _box(max_frames=100)
    hub.subscribe(slow, ["T"])
    hub.subscribe(fast, ["T"])
    overflowed = []
    for i in range(5):
        overflowed += hub.publish("T", str(i).encode())
    assert overflowed == [slow]
    assert slow.overflowed and len(slow.frames) == 2
    assert [f.decode() for f in fast.frames] == ["0", "1", "2", "3", "4"]


def test_outbox_wakes_only_when_becoming_non_empty_and_drain_joins():
    """The writer is woken on the empty→non-empty edge; drain returns frames in order."""
    box, wakes = _box()
    box.push(b"a")
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
    core.handle([Record("A", b"1"), Record("B", b"9"), Record("A", b"2"), Record("A", b"3")])
    assert hub.counters.records_received == 4
    assert hub.counters.records_no_subscriber == 1
    assert list(box.frames) == [tick_frame("A", b"1"), tick_frame("A", b"2"), tick_frame("A", b"3")]
    assert len(pauses) == 1


def test_ingest_reports_overflowed_clients():
    """The ingest core hands overflowed clients to its callback so the adapter can close them."""
    hub, _ = _hub()
    box, _ = _box(1)
    hub.subscribe(box, ["A"])
    reported = []
    core = IngestCore(hub, on_overflow=reported.extend)
    core.handle([Record("A", b"1"), Record("A", b"2")])
    assert reported == [box]
