"""The pure parts every adapter shares: positions, backoff, URL choice, the update buffer, events.

No sockets, no threads, no clocks of their own: randomness and time come in
as arguments, so each piece is tested with exact values.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Rand = Callable[[], float]  # uniform in [0, 1), like random.random


@dataclass(frozen=True, slots=True)
class Update:
    """One value of one token, as the app sees it (duplicates never become an Update)."""

    token: str
    kind: str  # "tick" | "snapshot" | "resync"
    data: Any  # parsed JSON, or bytes for a payload that is not JSON
    partition: int
    offset: int
    ts: int  # the producer's timestamp, ms since the epoch
    received_at: int  # when this client parsed it, ms since the epoch


# -- events (the payloads of `client.on(name, fn)`) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class StateEvent:
    """`connecting` / `connected` (authenticated and resubscribed) / `reconnecting` / `closed`."""

    state: str
    url: str | None = None
    attempt: int = 0
    delay_ms: int = 0
    code: int | None = None
    reason: str = ""
    subprotocol: str | None = None


@dataclass(frozen=True, slots=True)
class GapEvent:
    tokens: tuple[str, ...]
    code: int


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str | int
    message: str
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UnsubscribedEvent:
    tokens: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class AuthFailedEvent:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class DuplicateEvent:
    token: str
    partition: int
    offset: int


EVENT_NAMES = ("update", "state", "gap", "error", "unsubscribed", "auth_failed", "duplicate")


@dataclass
class Stats:
    """Counters of one client, over all its connections."""

    updates: int = 0
    duplicates: int = 0
    reconnects: int = 0
    resyncs: int = 0
    gaps: int = 0
    invalid_frames: int = 0
    conflated: int = 0  # updates the buffer replaced by a newer value of their token
    dropped: int = 0  # updates the buffer dropped without a newer one of their token queued


# -- positions ------------------------------------------------------------------------------------


class Positions:
    """Per token the last accepted update; what is at or behind it is a duplicate.

    Offsets are ordered within a partition only: an update from another
    partition (the topic was re-partitioned) starts the token afresh. A resync
    snapshot follows the same rule: it replaces missed ticks, so it is news
    unless it is at or behind what the client already holds.
    """

    def __init__(self) -> None:
        self._last: dict[str, Update] = {}
        self.duplicates = 0

    def accept(self, update: Update) -> bool:
        """Hold `update` and return True, or count it as a duplicate and return False."""
        held = self._last.get(update.token)
        if held is not None and held.partition == update.partition and update.offset <= held.offset:
            self.duplicates += 1
            return False
        self._last[update.token] = update
        return True

    def last(self, token: str) -> Update | None:
        return self._last.get(token)

    def forget(self, tokens: Sequence[str]) -> None:
        """Drop what is held for `tokens` (unsubscribed: a later subscribe starts afresh)."""
        for t in tokens:
            self._last.pop(t, None)


# -- backoff and URL choice -----------------------------------------------------------------------


class Backoff:
    """Capped exponential backoff with full jitter: random(0, min(max, initial * 2**attempt)).

    Full jitter spreads a thousand clients of one dead shard over the whole
    window instead of bunching them at its edges.
    """

    def __init__(self, initial_s: float = 0.25, max_s: float = 10.0, rand: Rand = random.random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.rand = rand
        self.attempt = 0

    def next_delay_s(self) -> float:
        bound = min(self.max_s, self.initial_s * 2 ** self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return self.rand() * bound

    def reset(self) -> None:
        self.attempt = 0


class UrlRing:
    """The URLs to try, in turn; the first one picked at random so clients spread over shards."""

    def __init__(self, urls: Sequence[str], rand: Rand = random.random) -> None:
        unique = list(dict.fromkeys(urls))
        if not unique:
            raise ValueError("at least one URL is needed")
        self.urls = unique
        self.index = min(int(rand() * len(unique)), len(unique) - 1)

    @property
    def current(self) -> str:
        return self.urls[self.index]

    def advance(self) -> str:
        """Move to the next URL (the same one again only when there is a single URL)."""
        self.index = (self.index + 1) % len(self.urls)
        return self.current


# -- the buffer between the connection and a slower app --------------------------------------------


class UpdateBuffer:
    """A bounded FIFO of updates; when full, conflates per token so no token's latest value is lost.

    While the app keeps up, it gets every update in order. When more than
    `max_pending` are waiting, the buffer is collapsed to the newest update of each token
    (the older ones counted `conflated`): a live price is worth more than a
    stale backlog, as on the shard. Only when more than `max_pending` distinct
    tokens are waiting does the oldest update go without a newer one of its
    token (counted `dropped`) — size the buffer above the tokens you follow.
    Order per token is kept either way.
    """

    def __init__(self, max_pending: int, stats: Stats) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.stats = stats
        self._q: deque[Update] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def push(self, update: Update) -> None:
        self._q.append(update)
        if len(self._q) > self.max_pending:
            self._collapse()
            while len(self._q) > self.max_pending:
                self._q.popleft()
                self.stats.dropped += 1

    def pop(self) -> Update | None:
        return self._q.popleft() if self._q else None

    def _collapse(self) -> None:
        """Keep only the newest update of each token, in the order those newest ones arrived."""
        seen: set[str] = set()
        kept: list[Update] = []
        for u in reversed(self._q):
            if u.token not in seen:
                seen.add(u.token)
                kept.append(u)
        self.stats.conflated += len(self._q) - len(kept)
        kept.reverse()
        self._q = deque(kept)


# -- listeners -------------------------------------------------------------------------------------


@dataclass
class Listeners:
    """`on(name, fn)` bookkeeping; calling them (and catching what they raise) is the adapter's job."""

    by_name: dict[str, list[Callable[[Any], object]]] = field(
        default_factory=lambda: {n: [] for n in EVENT_NAMES})

    def add(self, name: str, fn: Callable[[Any], object]) -> Callable[[], None]:
        if name not in self.by_name:
            raise ValueError(f"unknown event {name!r}; one of {', '.join(EVENT_NAMES)}")
        fns = self.by_name[name]
        fns.append(fn)

        def off() -> None:
            if fn in fns:
                fns.remove(fn)

        return off

    def get(self, name: str) -> list[Callable[[Any], object]]:
        return list(self.by_name.get(name, ()))
