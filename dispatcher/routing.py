"""Routing decisions, free of I/O: which shards get which records of a poll.

The router depends only on the `RouteLookup` seam (a local table kept in sync
with Redis by `registry_sync`); tests pass a dictionary.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from common.records import Record
from common.registry import Change


class Mode(StrEnum):
    TARGETED = "targeted"  # only shards with a subscriber of the record's token
    BROADCAST = "broadcast"  # every live shard (the old design, kept as a baseline)


class RouteLookup(Protocol):
    """What the router needs to know: token → shard ids, and whether that is trustworthy."""

    def shards_for(self, token: str) -> frozenset[str]: ...

    @property
    def healthy(self) -> bool: ...


EMPTY: frozenset[str] = frozenset()


class RoutingTable:
    """token → shard ids, replaced whole on (re)sync and patched by change-feed messages.

    One writer thread (the registry sync) and any number of readers: every
    update swaps in a new frozenset or dict, so readers never see a half-made
    value and need no lock.
    """

    def __init__(self) -> None:
        self._routes: dict[str, frozenset[str]] = {}
        self.healthy = False

    def replace(self, routes: dict[str, set[str]]) -> None:
        self._routes = {t: frozenset(s) for t, s in routes.items() if s}

    def apply(self, change: Change) -> None:
        """Apply one change-feed message (route add/del or a shard's reset)."""
        if change.op == "reset":
            self.drop_shard(change.shard)
            return
        if change.op != "route":
            return
        routes = self._routes
        for token in change.add:
            routes[token] = routes.get(token, EMPTY) | {change.shard}
        for token in change.remove:
            left = routes.get(token, EMPTY) - {change.shard}
            if left:
                routes[token] = left
            else:
                routes.pop(token, None)

    def drop_shard(self, shard_id: str) -> None:
        """Remove a shard from every token (rare: a shard restarted or was cleaned up)."""
        routes = {}
        for token, shards in self._routes.items():
            left = shards - {shard_id} if shard_id in shards else shards
            if left:
                routes[token] = left
        self._routes = routes

    def shards_for(self, token: str) -> frozenset[str]:
        return self._routes.get(token, EMPTY)

    def tokens_of(self, shard_id: str) -> list[str]:
        """Every token routed to a shard (a full scan: for rare events such as a shard's return)."""
        return [t for t, shards in self._routes.items() if shard_id in shards]

    def __len__(self) -> int:
        return len(self._routes)


@dataclass
class RouteCounters:
    records: int = 0
    deliveries: int = 0  # (record, shard) pairs handed on
    unrouted: int = 0  # records no live shard wanted
    fallback_batches: int = 0  # batches broadcast because the table was unhealthy


class Router:
    """Splits one poll's records into per-shard lists, preserving per-token order."""

    def __init__(self, lookup: RouteLookup, mode: Mode = Mode.TARGETED) -> None:
        self.lookup = lookup
        self.mode = mode
        self.counters = RouteCounters()

    def route(self, records: list[Record], live: Collection[str]) -> dict[str, list[Record]]:
        """Return shard id → its records, in input order; only live shards appear."""
        c = self.counters
        c.records += len(records)
        if not records or not live:
            c.unrouted += len(records)
            return {}
        if self.mode is Mode.BROADCAST or not self.lookup.healthy:
            if self.mode is Mode.TARGETED:
                c.fallback_batches += 1
            c.deliveries += len(records) * len(live)
            return {sid: records for sid in live}  # one read-only list shared by every shard
        return self._targeted(records, frozenset(live))

    def targets(self, token: str, live: Collection[str]) -> frozenset[str]:
        """The shards a record of `token` would go to now (no counters touched)."""
        if self.mode is Mode.BROADCAST or not self.lookup.healthy:
            return frozenset(live)
        return self.lookup.shards_for(token) & frozenset(live)

    def _targeted(self, records: list[Record], live: frozenset[str]) -> dict[str, list[Record]]:
        plan: dict[str, list[Record]] = {sid: [] for sid in live}
        lookup = self.lookup
        prepare = getattr(lookup, "prepare", None)  # lookups that fetch a whole poll at once
        if prepare is not None:
            prepare({r.token for r in records})
        # A per-record baseline (benchmarks) must really look up every record.
        cache: dict[str, frozenset[str]] | None = {} if getattr(lookup, "cache_per_poll", True) else None
        shards_for = lookup.shards_for
        unrouted = deliveries = 0
        for rec in records:
            targets = cache.get(rec.token) if cache is not None else None
            if targets is None:
                targets = shards_for(rec.token) & live
                if cache is not None:
                    cache[rec.token] = targets
            if not targets:
                unrouted += 1
                continue
            deliveries += len(targets)
            for sid in targets:
                plan[sid].append(rec)
        self.counters.unrouted += unrouted
        self.counters.deliveries += deliveries
        return {sid: recs for sid, recs in plan.items() if recs}
