"""Token-bucket request limiter for one client connection. Pure: the clock is injected."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Allows `rate_per_s` requests per second on average and bursts of up to `burst`."""

    __slots__ = ("burst", "clock", "level", "rate_per_s", "stamp")

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.level = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        """Spend one request; False when the client is over its rate."""
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False
