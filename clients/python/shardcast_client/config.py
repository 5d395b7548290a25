"""Every knob of a client, in one frozen dataclass (checked once, at construction)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ClientConfig:
    """Timings in seconds. Defaults follow the client contract shared with the JS client."""

    backoff_initial_s: float = 0.25
    backoff_max_s: float = 10.0
    ping_interval_s: float = 15.0  # nothing received this long: send {"op":"ping"}
    pong_timeout_s: float = 10.0  # still nothing this long after the ping: reconnect
    refresh_before_s: float = 30.0  # ask get_token this long before the token's exp (at most half its life)
    stable_after_s: float = 5.0  # a connection up this long resets the backoff
    open_timeout_s: float = 10.0  # TCP + upgrade
    close_timeout_s: float = 2.0  # wait for the server's close frame this long, then drop the socket
    max_pending: int = 10_000  # updates waiting for the app before conflation (see UpdateBuffer)
    max_frame_bytes: int = 1 << 20  # a larger server frame ends the connection (1009), then backoff
    chunk_tokens: int = 100  # tokens per subscribe request (the shard's default limit)
    retry_s: float = 1.0  # a request refused with rate_limited is sent again after this (times its try)
    max_retries: int = 5

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, not {v!r}")
        for name in ("max_pending", "max_frame_bytes", "chunk_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if self.ping_interval_s <= 0 or self.pong_timeout_s <= 0:
            raise ValueError("ping_interval_s and pong_timeout_s must be > 0")
