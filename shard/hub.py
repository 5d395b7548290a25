"""The shard's fan-out core: token → local clients, and each token's last value.

No sockets and no gevent here: an adapter gives each `Outbox` a `wake` callable
(its writer greenlet's event) and drains it; tests drive it with plain bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from common.records import Record
from shard.outbox import Outbox
from shard.protocol import snapshot_frame


class Advance(Enum):
    """What a record's position means to a shard that may have delivered some of its token."""

    STALE = "stale"  # at or behind the delivered position: drop it
    FIRST = "first"  # nothing of the token delivered yet
    NEWER = "newer"  # after the delivered position


@dataclass
class HubCounters:
    """Counters the shard reports; plain ints, read by the stats endpoint."""

    records_received: int = 0
    records_no_subscriber: int = 0
    frames_queued: int = 0
    clients_overflowed: int = 0
    snapshots_received: int = 0
    snapshots_stale: int = 0  # older than a value the shard already had
    duplicates_dropped: int = 0  # ticks at or behind a position already delivered (redelivery)
    resyncs_delivered: int = 0  # latest values that replaced missed ticks, sent as resync
    gaps_closed: int = 0  # subscribers closed because ticks were lost with no value to resync


@dataclass
class Hub:
    """Subscriptions, fan-out of pre-encoded frames, and the last value of each token.

    `on_first(token)` / `on_last(token)` fire when the shard gains its first or
    loses its last local subscriber of a token: the registry writer hooks in
    there, so the registry holds exactly the tokens with local subscribers.
    `last` keeps the newest record of every subscribed token, so a later
    subscriber gets a snapshot at once; the first subscriber's snapshot comes
    from the dispatcher, which sends the token's last record when the shard
    joins its route.
    """

    on_first: Callable[[str], None] = lambda token: None
    on_last: Callable[[str], None] = lambda token: None
    subs: dict[str, set[Outbox]] = field(default_factory=dict)
    counters: HubCounters = field(default_factory=HubCounters)
    last: dict[str, Record] = field(default_factory=dict)
    # A token with thousands of local subscribers is one long fan-out loop: it
    # yields to the event loop (the adapter passes gevent.idle) every so many frames.
    pause: Callable[[], None] = lambda: None
    pause_every_frames: int = 512

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
            box.forget(token)
            members = self.subs.get(token)
            if members is None:
                continue
            members.discard(box)
            if not members:
                del self.subs[token]
                self.last.pop(token, None)
                self.on_last(token)

    def remove(self, box: Outbox) -> None:
        """Forget a disconnected client and all its subscriptions."""
        box.closed = True
        self.unsubscribe(box, list(box.tokens))

    def publish(self, token: str, frame: bytes, ts_ms: int = 0) -> list[Outbox]:
        """Queue `frame` for every subscriber of `token`; return the clients that overflowed.

        `ts_ms`: the tick's Kafka timestamp, for the latency the writers measure.
        """
        members = self.subs.get(token)
        if not members:
            return []
        overflowed = []
        queued = 0
        every = self.pause_every_frames
        big = len(members) > every
        for i, box in enumerate(tuple(members) if big else members):  # a copy: we may yield
            if big and i % every == every - 1:
                self.pause()
            if box.overflowed or box.closed:
                continue  # already being disconnected
            if box.push(frame, token, ts_ms):
                queued += 1
            else:
                overflowed.append(box)
        self.counters.frames_queued += queued
        self.counters.clients_overflowed += len(overflowed)
        return overflowed

    def snapshot(self, token: str) -> bytes | None:
        """The snapshot frame of a token's last value, if the shard has one."""
        rec = self.last.get(token)
        return None if rec is None else snapshot_frame(rec)

    def advance(self, rec: Record) -> Advance:
        """Make `rec` the token's delivered position unless the shard already has it.

        STALE for a duplicate or older record (at or behind the last delivered
        position: a resent batch, or a failed-over dispatcher replaying from
        its last commit); FIRST or NEWER when it becomes the token's position.
        """
        cur = self.last.get(rec.token)
        if not rec.is_after(cur):
            return Advance.STALE
        self.last[rec.token] = rec
        return Advance.FIRST if cur is None else Advance.NEWER

    def subscribers(self, token: str) -> list[Outbox]:
        """The token's current local subscribers (a copy)."""
        return list(self.subs.get(token, ()))

    @property
    def subscription_count(self) -> int:
        return sum(len(m) for m in self.subs.values())
