"""The shard's fan-out core: token → local clients, one bounded outbox per client.

No sockets and no gevent here: an adapter gives each `Outbox` a `wake` callable
(its writer greenlet's event) and drains it; tests drive it with plain bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


class Outbox:
    """Bounded FIFO of ready-to-write frames for one client.

    A client whose outbox is full has fallen behind: `push` refuses, the outbox
    is marked `overflowed`, and the adapter disconnects it with
    `Close.SLOW_CONSUMER` — it never makes the fan-out wait.
    """

    __slots__ = ("closed", "conn_id", "frames", "max_frames", "overflowed", "tokens", "wake")

    def __init__(self, max_frames: int, wake: Callable[[], None], conn_id: int = 0) -> None:
        self.frames: deque[bytes] = deque()
        self.max_frames = max_frames
        self.wake = wake
        self.overflowed = False
        self.closed = False
        self.tokens: set[str] = set()
        self.conn_id = conn_id

    def push(self, frame: bytes) -> bool:
        """Queue a frame; False (and marked overflowed) if the client is too far behind."""
        if self.closed or self.overflowed:
            return False
        if len(self.frames) >= self.max_frames:
            self.overflowed = True
            self.wake()
            return False
        was_empty = not self.frames
        self.frames.append(frame)
        if was_empty:
            self.wake()
        return True

    def drain(self, max_bytes: int = 1 << 16) -> tuple[bytes, int]:
        """Pop queued frames up to about `max_bytes` (at least one); (joined bytes, frame count)."""
        frames = self.frames
        if not frames:
            return b"", 0
        out = [frames.popleft()]
        size = len(out[0])
        while frames and size < max_bytes:
            f = frames.popleft()
            out.append(f)
            size += len(f)
        return (b"".join(out) if len(out) > 1 else out[0]), len(out)


@dataclass
class HubCounters:
    """Counters the shard reports; plain ints, read by the stats endpoint."""

    records_received: int = 0
    records_no_subscriber: int = 0
    frames_queued: int = 0
    clients_overflowed: int = 0


@dataclass
class Hub:
    """Subscriptions and fan-out of pre-encoded frames.

    `on_first(token)` / `on_last(token)` fire when the shard gains its first or
    loses its last local subscriber of a token: the registry writer hooks in
    there, so the registry holds exactly the tokens with local subscribers.
    """

    on_first: Callable[[str], None] = lambda token: None
    on_last: Callable[[str], None] = lambda token: None
    subs: dict[str, set[Outbox]] = field(default_factory=dict)
    counters: HubCounters = field(default_factory=HubCounters)

    def subscribe(self, box: Outbox, tokens: Iterable[str]) -> None:
        """Add `box` as a subscriber of each token (idempotent)."""
        for token in tokens:
            if token in box.tokens:
                continue
            box.tokens.add(token)
            members = self.subs.get(token)
            if members is None:
                self.subs[token] = {box}
                self.on_first(token)
            else:
                members.add(box)

    def unsubscribe(self, box: Outbox, tokens: Iterable[str]) -> None:
        """Remove `box` from each token; unknown tokens are ignored."""
        for token in tokens:
            if token not in box.tokens:
                continue
            box.tokens.discard(token)
            members = self.subs.get(token)
            if members is None:
                continue
            members.discard(box)
            if not members:
                del self.subs[token]
                self.on_last(token)

    def remove(self, box: Outbox) -> None:
        """Forget a disconnected client and all its subscriptions."""
        box.closed = True
        self.unsubscribe(box, list(box.tokens))

    def has_subscribers(self, token: str) -> bool:
        return token in self.subs

    def publish(self, token: str, frame: bytes) -> list[Outbox]:
        """Queue `frame` for every subscriber of `token`; return the clients that overflowed."""
        members = self.subs.get(token)
        if not members:
            return []
        overflowed = []
        queued = 0
        for box in members:
            if box.overflowed or box.closed:
                continue  # already being disconnected
            if box.push(frame):
                queued += 1
            else:
                overflowed.append(box)
        self.counters.frames_queued += queued
        self.counters.clients_overflowed += len(overflowed)
        return overflowed

    @property
    def subscription_count(self) -> int:
        return sum(len(m) for m in self.subs.values())
