"""The newest record of each token, bounded: the source of snapshots and resyncs. No I/O.

Kafka keys are producer-controlled, so an unbounded map grew by ~1.15 KB per
distinct key, forever. Past `max_tokens` the least recently updated token is
forgotten: it has not ticked for that many other tokens' updates, and a
token it concerns simply gets no snapshot (a shard then closes its
subscribers with 4010 instead of resyncing them, should it have lost ticks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container

from common.records import Record


class LastValues:
    """LRU map token → newest record; written by the Kafka thread, read by any thread."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._recs: OrderedDict[str, Record] = OrderedDict()
        self.evicted = 0

    def put(self, rec: Record) -> None:
        recs = self._recs
        recs[rec.token] = rec
        recs.move_to_end(rec.token)
        if len(recs) > self.max_tokens:
            recs.popitem(last=False)
            self.evicted += 1

    def get(self, token: str) -> Record | None:
        return self._recs.get(token)

    def retain_partitions(self, partitions: Container[int]) -> None:
        """Forget tokens of partitions this dispatcher no longer owns (swapped whole: readers never block)."""
        self._recs = OrderedDict((t, r) for t, r in self._recs.items() if r.partition in partitions)

    def __len__(self) -> int:
        return len(self._recs)
