"""Per-shard outbound buffer: credit-based flow control, resend and resync. Thread-safe, no I/O.

The Kafka thread `offer`s records and never blocks: past `max_records` the
oldest waiting records are dropped (and counted), because for live ticks the
newest value matters most and a slow or dead shard must not stall the others.
The sender thread `take`s batches only while the shard has granted credit.

Delivery is at least once within the bound: a batch stays here until the
shard acks it, and a stream that dies puts its unacked batches back at the
front, in order, for the next stream (the shard drops what it already had by
position). Loss is never silent: the token of every dropped record is
remembered, and before anything else the next batch carries each such
token's latest value (`latest(token)`, marked `resync`), or a `gap` marker when
no value is known, so the shard can tell the token's subscribers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from common.records import Record


def _no_latest(token: str) -> Record | None:
    return None


class ShardQueue:
    """Bounded FIFO of records for one shard plus the stream's unacked batches."""

    def __init__(self, max_records: int,
                 latest: Callable[[str], Record | None] = _no_latest,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_records = max_records
        self.latest = latest
        self.clock = clock
        self._records: deque[Record] = deque()
        self._in_flight: deque[tuple[int, list[Record]]] = deque()  # (seq, batch), oldest first
        self._in_flight_records = 0
        # Tokens whose records were dropped: a resync of each goes out before anything else.
        self._lost: dict[str, None] = {}
        self._cond = threading.Condition()
        self._window = 0  # batches the shard lets us have in flight; 0 until it says
        self._sent_seq = 0
        self.epoch = 0  # bumped when a stream dies, so its request iterator stops taking
        self.last_ack_s = 0.0  # clock() of the shard's last ack or stream grant: proof of life
        self.dropped = 0
        self.offered = 0
        self.sent_records = 0  # every send, resends included: a counter only grows
        self.resent_records = 0  # put back by a dead stream, to be sent again on the next
        self.resyncs = 0  # latest values sent because records of their token were dropped
        self.gaps = 0  # gap markers sent: records dropped, no value known
        self.closed = False

    def offer(self, records: list[Record]) -> int:
        """Append records; drop the oldest beyond the bound. Returns how many were dropped."""
        with self._cond:
            if self.closed:
                self.dropped += len(records)
                return len(records)
            self._records.extend(records)
            self.offered += len(records)
            over = min(len(self._records) + self._in_flight_records - self.max_records,
                       len(self._records))
            if over > 0:
                self._drop_oldest(over)
            self._cond.notify()
            return max(over, 0)

    def _drop_oldest(self, n: int) -> None:
        records, lost = self._records, self._lost
        for _ in range(n):
            lost[records.popleft().token] = None
        self.dropped += n

    def mark_lost(self, tokens: Iterable[str]) -> None:
        """Records of these tokens never reached the shard (it was counted dead): resync them first."""
        with self._cond:
            self._lost.update(dict.fromkeys(tokens))
            self._cond.notify()

    def open_stream(self, window: int) -> None:
        """A (re)connected stream granted `window` batches; sequence numbers restart at 1."""
        with self._cond:
            self._window = window
            self._sent_seq = 0
            self.last_ack_s = self.clock()
            self._cond.notify()

    def close_stream(self) -> int:
        """The stream died: put its unacked batches back in front, in order; returns how many."""
        with self._cond:
            self._window = 0
            self.epoch += 1
            requeued = 0
            while self._in_flight:
                _, batch = self._in_flight.pop()  # newest first, each pushed to the front
                self._records.extendleft(reversed(batch))
                requeued += len(batch)
            self._in_flight_records = 0
            self.resent_records += requeued
            self._cond.notify_all()
            return requeued

    def ack(self, seq: int) -> None:
        """The shard has handled every batch up to `seq`: forget them, return their credit."""
        with self._cond:
            self.last_ack_s = self.clock()
            flight = self._in_flight
            while flight and flight[0][0] <= seq:
                self._in_flight_records -= len(flight.popleft()[1])
            self._cond.notify()

    def take(
        self, max_records: int, timeout_s: float, epoch: int, max_bytes: int = 1 << 22
    ) -> tuple[int, list[Record]] | None:
        """Wait for records and credit on stream `epoch`; (seq, records), or None on timeout,
        close, or when that stream has died.

        Resyncs of tokens with dropped records come first. A batch holds at most
        `max_records` records and, past its first record, at most about
        `max_bytes` of payload, so it stays under gRPC's message limit.
        """
        with self._cond:
            ready = self._cond.wait_for(lambda: self._sendable(epoch), timeout_s)
            if not ready or self.closed or self._window == 0 or epoch != self.epoch:
                return None
            batch = self._resync_batch(max_records) if self._lost else self._fifo_batch(
                max_records, max_bytes)
            self.sent_records += len(batch)
            return self._send(batch), batch

    def ping(self, epoch: int) -> int | None:
        """An empty batch (its ack proves the shard alive) if stream `epoch` has credit."""
        with self._cond:
            if self.closed or epoch != self.epoch or not self._has_credit():
                return None
            return self._send([])

    def _send(self, batch: list[Record]) -> int:
        self._sent_seq += 1
        self._in_flight.append((self._sent_seq, batch))
        self._in_flight_records += len(batch)
        return self._sent_seq

    def _fifo_batch(self, max_records: int, max_bytes: int) -> list[Record]:
        records = self._records
        first = records.popleft()
        batch = [first]
        size = len(first.payload)
        while records and len(batch) < max_records:
            size += len(records[0].payload) + len(records[0].token)
            if size > max_bytes:
                break
            batch.append(records.popleft())
        return batch

    def _resync_batch(self, max_records: int) -> list[Record]:
        """The latest value of each lost token (newer than anything of it still queued)."""
        lost = self._lost
        batch = []
        for token in list(lost)[:max_records]:
            del lost[token]
            rec = self.latest(token)
            if rec is None:
                self.gaps += 1
                batch.append(Record(token, b"", gap=True))
            else:
                self.resyncs += 1
                batch.append(dataclasses.replace(rec, snapshot=False, resync=True))
        return batch

    def _has_credit(self) -> bool:
        return len(self._in_flight) < self._window

    def _sendable(self, epoch: int) -> bool:
        if self.closed or epoch != self.epoch:
            return True
        return bool(self._records or self._lost) and self._has_credit()

    def pending_offsets(self) -> dict[int, int]:
        """partition → lowest offset not yet acked by the shard (its commit must stay below).

        Snapshots and resyncs are re-sends of values already consumed: they hold nothing back.
        """
        low: dict[int, int] = {}
        with self._cond:
            for _, batch in self._in_flight:
                _lowest(batch, low)
            _lowest(self._records, low)
        return low

    def close(self) -> None:
        """Shard gone for good: refuse further records and wake the sender."""
        with self._cond:
            self.closed = True
            self.dropped += len(self._records) + self._in_flight_records
            self._records.clear()
            self._in_flight.clear()
            self._in_flight_records = 0
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        return len(self._records)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def in_flight_records(self) -> int:
        return self._in_flight_records


def _lowest(records: Iterable[Record], low: dict[int, int]) -> None:
    for r in records:
        if r.snapshot or r.resync or r.gap:
            continue
        cur = low.get(r.partition)
        if cur is None or r.offset < cur:
            low[r.partition] = r.offset
