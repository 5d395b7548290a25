"""When to `gc.freeze()`: pure decisions, tested without a garbage collector.

With thousands of long-lived connections, CPython's full collections scan
every connection's objects and stall the event loop (≈250 ms at 20k
connections here). `gc.freeze()` moves every object alive now into a
permanent generation that collections skip; it costs O(1). So the shard
freezes after each ramp-up (the connection count grew by a step). The price:
cyclic garbage among frozen objects is never collected, so once many frozen
connections have closed, it unfreezes, collects once and freezes again — one
pause, only after heavy churn.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class GcAction(Enum):
    NONE = "none"
    FREEZE = "freeze"  # gc.freeze(): O(1)
    REFREEZE = "refreeze"  # gc.unfreeze(); gc.collect(); gc.freeze(): one full pass


@dataclass
class GcPolicy:
    min_growth: int = 200  # connections gained since the last freeze before freezing again
    growth_fraction: float = 0.05
    churn_fraction: float = 0.5  # closed since the last refreeze / frozen connections
    frozen_conns: int = 0  # connections alive at the last freeze
    closed_since: int = 0  # connections closed since the last (re)freeze

    def decide(self, conns: int) -> GcAction:
        """Called periodically with the live connection count."""
        grown = conns - self.frozen_conns
        if self.frozen_conns and self.closed_since > max(self.min_growth,
                                                          self.churn_fraction * self.frozen_conns):
            self.frozen_conns, self.closed_since = conns, 0
            return GcAction.REFREEZE
        if grown >= max(self.min_growth, self.growth_fraction * self.frozen_conns):
            self.frozen_conns = conns
            return GcAction.FREEZE
        return GcAction.NONE

    def closed(self) -> None:
        self.closed_since += 1
