"""Records in, frames out: the shard's handling of one delivery batch. No I/O.

Each record's frame is built once, and only when the shard has a subscriber
for its token — in broadcast mode most records stop at the dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.records import Record
from shard.hub import Advance, Hub, Outbox
from shard.protocol import snapshot_frame, tick_frame


class IngestCore:
    """Feeds records into the hub and reports clients that overflowed or must be told of a gap.

    Every record goes through the hub's position check first: a record at or
    behind a position the shard already delivered for its token is dropped,
    so upstream redelivery (a resent batch, a failed-over dispatcher replaying
    from its last commit) never reaches a client twice.

    `pause` is called every `pause_every` fanned-out records so a large batch
    does not hold the event loop (the adapter passes `gevent.idle`, which,
    unlike `sleep(0)`, lets timers and I/O run).
    """

    def __init__(
        self,
        hub: Hub,
        on_overflow: Callable[[list[Outbox]], None],
        pause: Callable[[], None] = lambda: None,
        pause_every: int = 256,
        on_gap: Callable[[list[Outbox]], None] = lambda boxes: None,
    ) -> None:
        self.hub = hub
        self.on_overflow = on_overflow
        self.on_gap = on_gap
        self.pause = pause
        self.pause_every = pause_every
        self.batches = 0

    def handle(self, records: Iterable[Record]) -> None:
        """Fan every record out to its token's local subscribers, in order."""
        hub = self.hub
        counters = hub.counters
        subs = hub.subs
        self.batches += 1
        fanned = 0
        frames_at_pause = counters.frames_queued
        for rec in records:
            if rec.snapshot or rec.resync or rec.gap:
                frame = self._out_of_band(rec)
                if frame is None:
                    continue
                ts_ms = 0  # an old value: its age is not delivery latency
            else:
                counters.records_received += 1
                if rec.token not in subs:
                    counters.records_no_subscriber += 1
                    continue
                if hub.advance(rec) is Advance.STALE:
                    counters.duplicates_dropped += 1
                    continue
                frame = tick_frame(rec)
                ts_ms = rec.produce_ts_ms
            overflowed = hub.publish(rec.token, frame, ts_ms)
            if overflowed:
                self.on_overflow(overflowed)
            fanned += 1
            # Yield every so many records or frames, whichever comes first.
            frames = counters.frames_queued - frames_at_pause
            if fanned >= self.pause_every or frames >= hub.pause_every_frames:
                self.pause()
                fanned, frames_at_pause = 0, counters.frames_queued

    def _out_of_band(self, rec: Record) -> bytes | None:
        """A snapshot (route joined), a resync (records were dropped) or a gap marker.

        A value newer than one the shard already delivered means its
        subscribers missed ticks in between, so it goes out marked ``resync``
        whatever the dispatcher called it; an older or equal one is dropped.
        """
        hub = self.hub
        counters = hub.counters
        if rec.gap:
            boxes = hub.subscribers(rec.token)
            if boxes:
                counters.gaps_closed += len(boxes)
                self.on_gap(boxes)
            return None
        counters.snapshots_received += 1
        if rec.token not in hub.subs:
            return None
        advanced = hub.advance(rec)
        if advanced is Advance.STALE:
            counters.snapshots_stale += 1
            return None
        resync = rec.resync or advanced is Advance.NEWER
        counters.resyncs_delivered += resync
        return snapshot_frame(rec, resync)
