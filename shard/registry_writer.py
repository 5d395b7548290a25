"""Keeps this shard's registry entries equal to its local subscriptions (gevent adapter).

The hub calls `mark(token, present)` on a token's first/last local subscriber;
one greenlet writes the accumulated changes to Redis in a single MULTI (so a
burst of subscribes costs one round trip), another heartbeats. Any Redis error
marks the state dirty: once Redis answers again the shard re-registers
everything it holds, so a Redis restart or a janitor clean-up heals itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import gevent
import gevent.event
import redis

from common.backoff import Backoff
from common.registry import Registry, ShardInfo, now_ms

log = logging.getLogger(__name__)


class RegistryWriter:
    """Owns every Redis write a shard makes."""

    def __init__(
        self,
        registry: Registry,
        info: Callable[[], ShardInfo],
        current_tokens: Callable[[], Iterable[str]],
        heartbeat_s: float,
        ttl_s: float,
    ) -> None:
        self.registry = registry
        self.info = info
        self.current_tokens = current_tokens
        self.heartbeat_s = heartbeat_s
        self.ttl_ms = int(ttl_s * 1000)
        self.registered: set[str] = set()
        self.synced = False
        self._pending: dict[str, bool] = {}
        self._gen = 0
        self._synced_gen = 0
        self._need_resync = True
        self._wake = gevent.event.Event()
        self._flushed = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False

    def mark(self, token: str, present: bool) -> None:
        """Record that the shard now has (or no longer has) local subscribers of `token`."""
        self._pending[token] = present
        self._gen += 1
        self._wake.set()

    def wait_synced(self, timeout_s: float) -> bool:
        """Block this greenlet until every change marked so far is in Redis (or timeout)."""
        target = self._gen
        deadline = gevent.get_hub().loop.now() + timeout_s
        while self._synced_gen < target:
            left = deadline - gevent.get_hub().loop.now()
            if left <= 0 or not self._flushed.wait(left):
                return False
        return True

    def start(self) -> None:
        """Clean up a previous life with this id, register as live, then keep in sync.

        Waits (with backoff) for Redis rather than fail, so a shard started
        before its Redis simply becomes healthy once Redis is there.
        """
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while True:
            try:
                self._resync()
                self.registry.heartbeat(self.info(), self.ttl_ms)
                self.registry.announce("up", self.info().shard_id)
                break
            except redis.RedisError as exc:
                log.warning("registry unreachable at start, retrying: %s", exc)
                gevent.sleep(backoff.next_delay_s())
        self._greenlets = [gevent.spawn(self._flush_loop), gevent.spawn(self._heartbeat_loop)]

    def stop(self) -> None:
        """Clean shutdown: stop writing and remove every trace of this shard."""
        self._stopping = True
        gevent.killall(self._greenlets, timeout=2)
        try:
            self.registry.deregister(self.info().shard_id)
        except redis.RedisError as exc:
            log.warning("deregister failed (entries expire by TTL): %s", exc)

    def beat_now(self) -> None:
        """Heartbeat at once (a state change should not wait for the next period)."""
        try:
            self.registry.heartbeat(self.info(), self.ttl_ms)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    # -- loops -----------------------------------------------------------
    def _flush_loop(self) -> None:
        backoff = Backoff(base_s=0.05, cap_s=self.heartbeat_s)  # re-registered within a heartbeat
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            try:
                self._flush()
                backoff.reset()
            except redis.RedisError as exc:
                self.synced = False
                self._need_resync = True
                log.warning("registry write failed, will resync: %s", exc)
                gevent.sleep(backoff.next_delay_s())
                self._wake.set()

    def _flush(self) -> None:
        gen = self._gen
        if self._need_resync:
            self._resync()
        else:  # on failure the loop sets _need_resync: the next pass rewrites everything
            pending, self._pending = self._pending, {}
            self._apply(pending)
        self.synced = True
        self._synced_gen = gen
        done, self._flushed = self._flushed, gevent.event.Event()
        done.set()

    def _apply(self, pending: dict[str, bool]) -> None:
        add = [t for t, on in pending.items() if on and t not in self.registered]
        remove = [t for t, on in pending.items() if not on and t in self.registered]
        self.registry.apply_routes(self.info().shard_id, add, remove)
        self.registered.update(add)
        self.registered.difference_update(remove)

    def _resync(self) -> None:
        """Replace whatever Redis holds for this shard id with the local truth.

        One transaction that re-adds every local token and removes only what
        Redis holds beyond them (a previous life's tokens), never a reset then
        a re-add: a dispatcher applying the change feed never sees this shard
        without its routes, so no tick is routed past it meanwhile. Announcing
        every token as added also makes each dispatcher send its latest value,
        which the shard delivers as a resync where its clients missed ticks.
        """
        shard_id = self.info().shard_id
        self._pending.clear()
        tokens = list(self.current_tokens())
        stale = self.registry.registered_tokens(shard_id).difference(tokens)
        self.registry.apply_routes(shard_id, tokens, stale)
        self.registered = set(tokens)
        self._need_resync = False
        self.synced = True
        log.info("registry resynced tokens=%d", len(tokens))

    def _heartbeat_loop(self) -> None:
        while not self._stopping:
            gevent.sleep(self.heartbeat_s)
            try:
                info = self.info()
                existed = self.registry.heartbeat(info, self.ttl_ms)
                if not existed:
                    log.warning("liveness key had expired; re-registering")
                    self.registry.announce("up", info.shard_id)
                    self._need_resync = True
                    self._wake.set()
            except redis.RedisError as exc:
                self.synced = False
                self._need_resync = True
                self._wake.set()  # the flush loop retries the resync until Redis answers
                log.warning("heartbeat failed: %s", exc)


def make_info(shard_id: str, grpc_addr: str, ws_addr: str, started_ms: int,
              load: Callable[[], tuple[int, int, str]], period_s: float,
              ttl_s: float) -> Callable[[], ShardInfo]:
    """A callable returning the shard's current heartbeat record.

    `load()` gives (connections, tokens, state).
    """

    def info() -> ShardInfo:
        connections, tokens, state = load()
        return ShardInfo(shard_id, grpc_addr, ws_addr, started_ms, now_ms(), connections, tokens,
                         int(period_s * 1000), int(ttl_s * 1000), state)

    return info
