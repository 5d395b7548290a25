"""Keeps the dispatcher's local routing table and live-shard set in sync with Redis.

One thread: subscribe to the change feed, wait for the subscription to be
confirmed, load the whole table, then apply changes as they arrive. Liveness is
re-read every `refresh_s` and at once on a shard's up/down message. An
operator's run-time dispatch mode is read on load and followed on change. On any Redis
error the table is marked unhealthy (the router then broadcasts rather than
drop data) and the whole sequence restarts after a jittered backoff.

A table reloaded after reconnecting is not trusted for `grace_s`: Redis may
have come back empty, and until every shard has re-registered (within one of
its heartbeats) the table lacks their routes, so the router keeps broadcasting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from common.backoff import Backoff
from common.registry import Registry, ShardInfo, decode_change
from dispatcher.routing import RoutingTable
from dispatcher.shard_addrs import DEFAULT_NETWORKS, AddressPolicy, parse_networks

log = logging.getLogger(__name__)


class RegistrySync:
    """The dispatcher's `RouteLookup`: local table + live shards, fed from Redis."""

    def __init__(self, redis_url: str, namespace: str, refresh_s: float,
                 janitor_grace_s: float, backoff_cap_s: float,
                 on_route_add: Callable[[str, str], None] = lambda token, shard: None,
                 on_mode: Callable[[str], None] = lambda mode: None,
                 grace_s: float = 0.0, policy: AddressPolicy | None = None,
                 reload_s: float = 30.0) -> None:
        self.client = redis.Redis.from_url(
            redis_url, socket_timeout=max(2.0, refresh_s * 4), socket_connect_timeout=2
        )
        self.registry = Registry(self.client, namespace)
        self.refresh_s = refresh_s
        self.janitor_grace_s = janitor_grace_s
        self.on_route_add = on_route_add
        self.on_mode = on_mode
        self.backoff = Backoff(base_s=0.1, cap_s=backoff_cap_s)
        self.table = RoutingTable()
        self.live: dict[str, ShardInfo] = {}
        self.dead: list[str] = []  # registered, not heartbeating, not yet cleaned up
        self.last_sync_s = 0.0
        self.changes_applied = 0
        self.resyncs = 0
        self.grace_s = grace_s
        self.policy = policy or AddressPolicy(parse_networks(DEFAULT_NETWORKS))
        self.reload_s = reload_s  # full reloads repair whatever a lost or forged change broke
        self.changes_rejected = 0
        self._refused_seen: set[tuple[str, str]] = set()  # logged once each
        self.reloads = 0
        self._trusted_from = 0.0  # time.monotonic() from which a reloaded table is trusted
        self._dead_since: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-sync", daemon=True)

    # RouteLookup ------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """Routes can be trusted: in sync with Redis, and past the re-registration grace."""
        return self.table.healthy and time.monotonic() >= self._trusted_from

    @property
    def connected(self) -> bool:
        """In sync with Redis (perhaps still within the grace after a reconnect)."""
        return self.table.healthy

    def shards_for(self, token: str) -> frozenset[str]:
        return self.table.shards_for(token)

    # lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except (redis.RedisError, OSError) as exc:
                if self.table.healthy:
                    log.warning("registry unreachable, broadcasting until it is back: %s", exc)
                self.table.healthy = False
            except Exception:  # a bug or a hostile registry value must not end the sync for good
                log.exception("registry sync failed, resyncing")
                self.table.healthy = False
            self._stop.wait(self.backoff.next_delay_s())

    def _session(self) -> None:
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.registry.channel)
            self._await_subscribed(pubsub)
            self._refresh_live()
            self.table.replace(self.registry.load_routes(self.live))
            mode = self.registry.get_mode()
            if mode:
                self.on_mode(mode)
            if self.resyncs:  # a reconnect: Redis may have lost what shards registered
                self._trusted_from = time.monotonic() + self.grace_s
            self.table.healthy = True
            self.resyncs += 1
            self.backoff.reset()
            log.info("routing table loaded tokens=%d live_shards=%d", len(self.table), len(self.live))
            self._follow(pubsub)
        finally:
            pubsub.close()

    def _await_subscribed(self, pubsub: redis.client.PubSub) -> None:
        """Only once SUBSCRIBE is confirmed can a snapshot miss no change."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "subscribe":
                return
        raise redis.ConnectionError("no subscribe confirmation")

    def _follow(self, pubsub: redis.client.PubSub) -> None:
        next_refresh = time.monotonic() + self.refresh_s
        next_reload = time.monotonic() + self.reload_s
        while not self._stop.is_set():
            msg = pubsub.get_message(timeout=min(0.1, self.refresh_s))
            if msg and msg["type"] == "message":
                self._apply(msg["data"])
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh_live()
                next_refresh = now + self.refresh_s
            if now >= next_reload:
                self._reload()
                next_reload = now + self.reload_s

    def _reload(self) -> None:
        """Reload the whole table from the shards' own token sets (pub/sub is at most once)."""
        self.table.replace(self.registry.load_routes(self.live))
        self.reloads += 1

    def _apply(self, raw: bytes) -> None:
        change = decode_change(raw)
        if change is None:
            self.changes_rejected += 1
            if self.changes_rejected <= 10 or self.changes_rejected % 1000 == 0:
                log.warning("rejected change-feed message #%d (%d bytes): %r",
                            self.changes_rejected, len(raw), raw[:120])
            return
        self.changes_applied += 1
        self.last_sync_s = time.time()
        if change.op in ("up", "down"):
            self._refresh_live()
            return
        if change.op == "mode":
            self.on_mode(change.value)
            return
        self.table.apply(change)
        for token in change.add:
            self.on_route_add(token, change.shard)

    def _refresh_live(self) -> None:
        # Two refresh periods of slack: one missed or late refresh still drops a
        # silent shard before its TTL is over.
        live, dead = self.registry.load_shards(slack_ms=int(self.refresh_s * 2000) + 100)
        refused = [sid for sid, info in live.items() if not self.policy.allows(info.grpc_addr)]
        for sid in refused:
            addr = live.pop(sid).grpc_addr[:100]
            if (sid, addr) not in self._refused_seen and len(self._refused_seen) < 1000:
                self._refused_seen.add((sid, addr))
                log.warning("ignoring shard %s: address %r outside --shard-networks", sid, addr)
        self.live = live
        self.dead = dead
        self.last_sync_s = time.time()
        self._janitor(dead)

    def _janitor(self, dead: list[str]) -> None:
        """Remove routes of shards dead for longer than the grace period (never restarted)."""
        now = time.monotonic()
        self._dead_since = {sid: self._dead_since.get(sid, now) for sid in dead}
        for sid, since in list(self._dead_since.items()):
            if now - since >= self.janitor_grace_s and self.registry.forget(sid):
                log.info("janitor removed dead shard %s", sid)
                del self._dead_since[sid]
