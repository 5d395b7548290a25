"""How long the broker may hold a fetch: gather while records flow, answer at once after a lull. No I/O.

The dispatcher's poll loop pays a fixed cost per poll, not per record: a fetch
round trip and kafka-python's decoding of it, one gRPC batch per target shard,
and the shard's handling of each batch. With the broker answering a fetch at
the first record (`fetch.min.bytes` 1), a steady flow meant a poll per
producer batch, and at 10k delivered frames/s that fixed cost was most of the
dispatcher's CPU and a good part of the shard's.

So while records flow, each fetch asks the broker to wait until `batch_bytes`
are ready or `linger_ms` has passed, and one poll carries what arrived in that
time. Once a poll comes back empty (no record for a whole poll timeout), the
fetch goes back to "answer at the first record, else in `idle_wait_ms`": an
idle topic costs a fetch round trip every `idle_wait_ms` instead of every
`linger_ms`, and the first record after a lull is not held at all.

Latency cost: at most `linger_ms` per record while busy (measured by
`make bench-peers`, see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

IDLE_AFTER_LINGERS = 2  # a held fetch comes back empty after one linger: two mean a lull
MIN_IDLE_AFTER_S = 0.1  # the poll loop's timeout: a shorter lull is not seen as one


@dataclass(frozen=True)
class FetchSettings:
    """What a fetch asks of the broker: answer once `min_bytes` are ready, or after `max_wait_ms`."""

    min_bytes: int
    max_wait_ms: int

    @property
    def mode(self) -> str:
        return "idle" if self.min_bytes == 1 else "busy"


class FetchPacer:
    """Chooses the fetch settings from whether the last poll brought records."""

    def __init__(self, linger_ms: int, batch_bytes: int, idle_wait_ms: int) -> None:
        self.idle = FetchSettings(1, idle_wait_ms)
        # linger 0 (or a 1-byte batch) turns the pacing off: always answer at the first record.
        busy = FetchSettings(batch_bytes, linger_ms)
        self.busy = busy if linger_ms > 0 and batch_bytes > 1 else self.idle
        self.current = self.idle
        self.switches = 0
        self.idle_after_s = max(MIN_IDLE_AFTER_S, IDLE_AFTER_LINGERS * linger_ms / 1000)
        self._records_at = float("-inf")

    def reset(self) -> FetchSettings:
        """A new consumer: idle settings, which it is created with."""
        self.current = self.idle
        self._records_at = float("-inf")
        return self.current

    def after_poll(self, got_records: bool, now_s: float) -> FetchSettings | None:
        """The settings the next fetches should use, or None when they stay as they are.

        `now_s`: a monotonic clock. A poll may come back empty while the broker
        still holds a fetch (a linger longer than the poll timeout), so only a
        lull of `idle_after_s` makes the fetches idle again.
        """
        if got_records:
            self._records_at = now_s
            want = self.busy
        elif now_s - self._records_at >= self.idle_after_s:
            want = self.idle
        else:
            return None
        if want == self.current:
            return None
        self.current = want
        self.switches += 1
        return want
