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

This module is the I/O adapter; every decision (what a message does, which
shards are live, when the janitor cleans up) is in `dispatcher.sync_core`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from common.backoff import Backoff
from common.registry import Registry
from dispatcher.shard_addrs import AddressPolicy
from dispatcher.sync_core import Step, SyncCore

log = logging.getLogger(__name__)


class RegistrySync(SyncCore):
    """The dispatcher's `RouteLookup`: local table + live shards, fed from Redis.

    `client` is a seam for unit tests (a fake Redis); by default one is made from `redis_url`.
    """

    def __init__(self, redis_url: str, namespace: str, refresh_s: float,
                 janitor_grace_s: float, backoff_cap_s: float,
                 on_route_add: Callable[[str, str], None] = lambda token, shard: None,
                 on_mode: Callable[[str], None] = lambda mode: None,
                 grace_s: float = 0.0, policy: AddressPolicy | None = None,
                 reload_s: float = 30.0, client: redis.Redis | None = None) -> None:
        super().__init__(refresh_s, janitor_grace_s, on_route_add=on_route_add, on_mode=on_mode,
                         grace_s=grace_s, policy=policy)
        self.client = client if client is not None else redis.Redis.from_url(
            redis_url, socket_timeout=max(2.0, refresh_s * 4), socket_connect_timeout=2
        )
        self.registry = Registry(self.client, namespace)
        self.backoff = Backoff(base_s=0.1, cap_s=backoff_cap_s)
        self.reload_s = reload_s  # full reloads repair whatever a lost or forged change broke
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-sync", daemon=True)

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
                if self.lost():
                    log.warning("registry unreachable, broadcasting until it is back: %s", exc)
            except Exception:  # a bug or a hostile registry value must not end the sync for good
                log.exception("registry sync failed, resyncing")
                self.lost()
            self._stop.wait(self.backoff.next_delay_s())

    def _session(self) -> None:
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.registry.channel)
            self._await_subscribed(pubsub)
            self._refresh_live()
            self.table.replace(self.registry.load_routes(self.live))
            self.loaded(self.registry.get_mode())
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
        self.reloaded(self.registry.load_routes(self.live))

    def _apply(self, raw: bytes) -> None:
        if self.message(raw) is Step.LIVENESS:
            self._refresh_live()

    def _refresh_live(self) -> None:
        live, dead = self.registry.load_shards(slack_ms=self.slack_ms)
        for sid in self.shards_read(live, dead):
            if self.registry.forget(sid):
                self.forgotten(sid)
