"""Per-shard outbound buffer with credit-based flow control. Thread-safe, no I/O.

The Kafka thread `offer`s records and never blocks: past `max_records` the
oldest are dropped (and counted), because for live ticks the newest value
matters most and a slow or dead shard must not stall the others. The sender
thread `take`s batches only while the shard has granted credit.
"""

from __future__ import annotations

import threading
from collections import deque

from common.records import Record


class ShardQueue:
    """Bounded FIFO of records for one shard plus the stream's in-flight window."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._records: deque[Record] = deque()
        self._cond = threading.Condition()
        self._window = 0  # batches the shard lets us have in flight; 0 until it says
        self._sent_seq = 0
        self._acked_seq = 0
        self.epoch = 0  # bumped when a stream dies, so its request iterator stops taking
        self.dropped = 0
        self.offered = 0
        self.sent_records = 0
        self.closed = False

    def offer(self, records: list[Record]) -> int:
        """Append records; drop the oldest beyond the bound. Returns how many were dropped."""
        with self._cond:
            if self.closed:
                self.dropped += len(records)
                return len(records)
            self._records.extend(records)
            self.offered += len(records)
            over = len(self._records) - self.max_records
            if over > 0:
                for _ in range(over):
                    self._records.popleft()
                self.dropped += over
            self._cond.notify()
            return max(over, 0)

    def open_stream(self, window: int) -> None:
        """A (re)connected stream granted `window` batches; sequence numbers restart at 1."""
        with self._cond:
            self._window = window
            self._sent_seq = self._acked_seq = 0
            self._cond.notify()

    def close_stream(self) -> int:
        """The stream died: batches in flight are lost (counted as dropped); returns how many."""
        with self._cond:
            self._window = 0
            self.epoch += 1
            self._cond.notify_all()
            return self._sent_seq - self._acked_seq

    def ack(self, seq: int) -> None:
        with self._cond:
            if seq > self._acked_seq:
                self._acked_seq = seq
                self._cond.notify()

    def take(
        self, max_records: int, timeout_s: float, epoch: int, max_bytes: int = 1 << 22
    ) -> tuple[int, list[Record]] | None:
        """Wait for records and credit on stream `epoch`; (seq, records), or None on timeout,
        close, or when that stream has died.

        A batch holds at most `max_records` records and, past its first record, at
        most about `max_bytes` of payload, so it stays under gRPC's message limit.
        """
        with self._cond:
            ready = self._cond.wait_for(lambda: self._sendable(epoch), timeout_s)
            if not ready or self.closed or self._window == 0 or epoch != self.epoch:
                return None
            records = self._records
            first = records.popleft()
            batch = [first]
            size = len(first.payload)
            while records and len(batch) < max_records:
                size += len(records[0].payload) + len(records[0].token)
                if size > max_bytes:
                    break
                batch.append(records.popleft())
            self._sent_seq += 1
            self.sent_records += len(batch)
            return self._sent_seq, batch

    def _sendable(self, epoch: int) -> bool:
        if self.closed or epoch != self.epoch:
            return True
        in_flight = self._sent_seq - self._acked_seq
        return bool(self._records) and self._window > 0 and in_flight < self._window

    def close(self) -> None:
        """Shard gone for good: refuse further records and wake the sender."""
        with self._cond:
            self.closed = True
            self.dropped += len(self._records)
            self._records.clear()
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        return len(self._records)

    @property
    def in_flight(self) -> int:
        return self._sent_seq - self._acked_seq
