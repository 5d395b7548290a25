"""The registry sync's decisions, free of I/O: what a change-feed message does to the routing table,
which registered shards count as live, and when a dead shard's routes are cleaned up.

`RegistrySync` (dispatcher/registry_sync.py) owns the Redis connection and the thread: it hands
this core what Redis said and carries out what the core decides. Kept apart so every decision is
tested with plain values and an injected clock, and so mutation testing covers it (docs/testing.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

from common.registry import ShardInfo, decode_change
from dispatcher.routing import RoutingTable
from dispatcher.shard_addrs import DEFAULT_NETWORKS, AddressPolicy, parse_networks

log = logging.getLogger("dispatcher.registry_sync")

MAX_REFUSED_LOGGED = 1000  # distinct (shard, address) pairs logged once each; beyond that, counted only


class Step(Enum):
    """What one change-feed message asks of the adapter."""

    REJECTED = "rejected"  # malformed or forged: counted and logged, nothing else
    LIVENESS = "liveness"  # a shard went up or down: re-read liveness now
    MODE = "mode"  # the operator's dispatch mode changed (on_mode has been called)
    ROUTE = "route"  # the table has been patched (route add/del, or a shard's reset)


class SyncCore:
    """Local table + live shards, and every decision about them; the adapter does the Redis I/O."""

    def __init__(self, refresh_s: float, janitor_grace_s: float,
                 on_route_add: Callable[[str, str], None] = lambda token, shard: None,
                 on_mode: Callable[[str], None] = lambda mode: None,
                 grace_s: float = 0.0, policy: AddressPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.refresh_s = refresh_s
        self.janitor_grace_s = janitor_grace_s
        self.on_route_add = on_route_add
        self.on_mode = on_mode
        self.grace_s = grace_s
        self.policy = policy or AddressPolicy(parse_networks(DEFAULT_NETWORKS))
        self.clock = clock  # monotonic: grace and janitor periods
        self.wall = wall  # wall clock: last_sync_s is reported as an age
        self.table = RoutingTable()
        self.live: dict[str, ShardInfo] = {}
        self.dead: list[str] = []  # registered, not heartbeating, not yet cleaned up
        self.last_sync_s = 0.0
        self.changes_applied = 0
        self.changes_rejected = 0
        self.resyncs = 0
        self.reloads = 0
        self._refused_seen: set[tuple[str, str]] = set()  # logged once each
        self._trusted_from = 0.0  # clock() from which a reloaded table is trusted
        self._dead_since: dict[str, float] = {}

    # RouteLookup ------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """Routes can be trusted: in sync with Redis, and past the re-registration grace."""
        return self.table.healthy and self.clock() >= self._trusted_from

    @property
    def connected(self) -> bool:
        """In sync with Redis (perhaps still within the grace after a reconnect)."""
        return self.table.healthy

    def shards_for(self, token: str) -> frozenset[str]:
        return self.table.shards_for(token)

    # what Redis said ----------------------------------------------------------
    @property
    def slack_ms(self) -> int:
        """Two refresh periods of slack: one missed or late refresh still drops a silent shard
        before its TTL is over."""
        return int(self.refresh_s * 2000) + 100

    def loaded(self, mode: str | None) -> None:
        """The whole table was just replaced by a load made after the change feed's subscription
        was confirmed: follow the stored dispatch `mode` (None: none set) and mark the table healthy.

        After a reconnect (not the first load) Redis may have lost what shards
        registered, so the table is not trusted until `grace_s` has passed.
        """
        if mode:
            self.on_mode(mode)
        if self.resyncs:
            self._trusted_from = self.clock() + self.grace_s
        self.table.healthy = True
        self.resyncs += 1

    def reloaded(self, routes: dict[str, set[str]]) -> None:
        """A periodic full reload: repairs whatever a lost or forged change broke."""
        self.table.replace(routes)
        self.reloads += 1

    def lost(self) -> bool:
        """Redis failed: broadcast until resynced. True if the table was healthy until now."""
        was = self.table.healthy
        self.table.healthy = False
        return was

    def message(self, raw: bytes) -> Step:
        """Apply one change-feed message; say what else the adapter must do."""
        change = decode_change(raw)
        if change is None:
            self.changes_rejected += 1
            if self.changes_rejected <= 10 or self.changes_rejected % 1000 == 0:
                log.warning("rejected change-feed message #%d (%d bytes): %r",
                            self.changes_rejected, len(raw), raw[:120])
            return Step.REJECTED
        self.changes_applied += 1
        self.last_sync_s = self.wall()
        if change.op in ("up", "down"):
            return Step.LIVENESS
        if change.op == "mode":
            self.on_mode(change.value)
            return Step.MODE
        self.table.apply(change)
        for token in change.add:
            self.on_route_add(token, change.shard)
        return Step.ROUTE

    def shards_read(self, live: dict[str, ShardInfo], dead: list[str]) -> list[str]:
        """Take one liveness read; return the dead shards due for the janitor.

        A shard whose gRPC address is outside the allowed networks is not live
        to this dispatcher (logged once per shard and address). A dead shard is
        due once it has been dead for `janitor_grace_s` (a restart within that
        time cleans up after itself); the adapter reports each one it removed
        with `forgotten`.
        """
        refused = [sid for sid, info in live.items() if not self.policy.allows(info.grpc_addr)]
        for sid in refused:
            addr = live.pop(sid).grpc_addr[:100]
            if (sid, addr) not in self._refused_seen and len(self._refused_seen) < MAX_REFUSED_LOGGED:
                self._refused_seen.add((sid, addr))
                log.warning("ignoring shard %s: address %r outside --shard-networks", sid, addr)
        self.live = live
        self.dead = dead
        self.last_sync_s = self.wall()
        now = self.clock()
        self._dead_since = {sid: self._dead_since.get(sid, now) for sid in dead}
        return [sid for sid, since in self._dead_since.items() if now - since >= self.janitor_grace_s]

    def forgotten(self, shard_id: str) -> None:
        """The janitor removed a dead shard's routes (it had not come back meanwhile)."""
        log.info("janitor removed dead shard %s", shard_id)
        del self._dead_since[shard_id]
