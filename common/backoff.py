"""Capped exponential backoff with jitter, for every reconnect loop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from `base_s` up to `cap_s`, each drawn uniformly below the bound.

    The jitter (each delay drawn in [bound/2, bound]) spreads the reconnects
    of many clients of one failed server, so they do not all come back in the
    same instant, while still growing steadily.
    """

    base_s: float = 0.1
    cap_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay_s(self) -> float:
        """Return the next delay and advance the attempt counter."""
        bound = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return self.rng.uniform(bound / 2, bound)

    def reset(self) -> None:
        """Start again from `base_s` after a success."""
        self.attempt = 0
