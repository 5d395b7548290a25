"""The pure parts of draining a shard, shared by the shard and the admin API.

Spreading the closes over a window keeps clients from reconnecting all at
once (a reconnect storm on the remaining shards).
"""

from __future__ import annotations

STEP_S = 0.05  # finest close granularity
MAX_WINDOW_S = 3600.0


def close_steps(n: int, window_s: float, step_s: float = STEP_S) -> tuple[list[int], float]:
    """How many clients to close at each step, and the pause between steps.

    `n` closes spread evenly over `window_s`: at most one step per `step_s`,
    never an empty step, the first step at once.
    """
    if n <= 0:
        return [], 0.0
    steps = max(1, min(n, int(window_s / step_s)))
    counts = [(i + 1) * n // steps - i * n // steps for i in range(steps)]
    return counts, window_s / steps


def check_window(window_s: float) -> str | None:
    """Why a drain window is unacceptable, or None."""
    if not 0 <= window_s <= MAX_WINDOW_S:  # also rejects NaN
        return f"window_s must be between 0 and {MAX_WINDOW_S:g}, got {window_s}"
    return None
