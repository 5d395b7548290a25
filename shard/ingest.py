"""Records in, frames out: the shard's handling of one delivery batch. No I/O.

Each record's frame is built once, and only when the shard has a subscriber
for its token — in broadcast mode most records stop at the dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.records import Record
from shard.hub import Hub, Outbox
from shard.protocol import snapshot_frame, tick_frame


class IngestCore:
    """Feeds records into the hub and reports clients that overflowed.

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
    ) -> None:
        self.hub = hub
        self.on_overflow = on_overflow
        self.pause = pause
        self.pause_every = pause_every
        self.batches = 0

    def handle(self, records: Iterable[Record]) -> None:
        """Fan every record out to its token's local subscribers, in order."""
        hub = self.hub
        counters = hub.counters
        subs = hub.subs
        last = hub.last
        self.batches += 1
        fanned = 0
        frames_at_pause = counters.frames_queued
        for rec in records:
            if rec.snapshot:
                frame = self._snapshot(rec)
                if frame is None:
                    continue
                ts_ms = 0  # an old value: its age is not delivery latency
            else:
                counters.records_received += 1
                if rec.token not in subs:
                    counters.records_no_subscriber += 1
                    continue
                last[rec.token] = rec
                frame = tick_frame(rec.token, rec.payload)
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

    def _snapshot(self, rec: Record) -> bytes | None:
        """A last value sent because this shard just joined the token's route."""
        counters = self.hub.counters
        counters.snapshots_received += 1
        if rec.token not in self.hub.subs:
            return None
        if not self.hub.accept_snapshot(rec):
            counters.snapshots_stale += 1
            return None
        return snapshot_frame(rec.token, rec.payload)
