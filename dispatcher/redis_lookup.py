"""Routing-cost baselines: routes read from Redis instead of the local table (never the default).

`--route-lookup redis-per-record` is the original plan's design, one Redis
round trip per record (SMEMBERS of the token's route set here, the set-valued
equivalent of its `GET token`); `redis-per-batch` pipelines one lookup per
distinct token of a Kafka poll. They exist so the benchmark can show, side by
side, what the local table (`registry_sync`, zero Redis commands per record)
saves. Liveness and the fallback to broadcast still come from the registry sync.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from common.registry import Registry
from dispatcher.registry_sync import RegistrySync
from dispatcher.routing import EMPTY


class RedisPerRecord:
    """One Redis round trip for every record (the router must not cache within a poll)."""

    cache_per_poll = False

    def __init__(self, sync: RegistrySync) -> None:
        self.sync = sync
        self.registry: Registry = sync.registry
        self.errors = 0

    @property
    def healthy(self) -> bool:
        return self.sync.healthy

    def shards_for(self, token: str) -> frozenset[str]:
        try:
            return frozenset(m.decode() for m in self.registry.r.smembers(self.registry.route_key(token)))
        except redis.RedisError:
            self.errors += 1
            return EMPTY


class RedisPerBatch:
    """One pipelined round trip per poll: SMEMBERS of every distinct token in it."""

    def __init__(self, sync: RegistrySync) -> None:
        self.sync = sync
        self.registry: Registry = sync.registry
        self.errors = 0
        self._routes: dict[str, frozenset[str]] = {}

    @property
    def healthy(self) -> bool:
        return self.sync.healthy

    def prepare(self, tokens: Iterable[str]) -> None:
        tokens = list(tokens)
        pipe = self.registry.r.pipeline(transaction=False)
        for t in tokens:
            pipe.smembers(self.registry.route_key(t))
        try:
            replies = pipe.execute()
        except redis.RedisError:
            self.errors += 1
            self._routes = {}
            return
        self._routes = {t: frozenset(m.decode() for m in r)
                        for t, r in zip(tokens, replies, strict=True) if r}

    def shards_for(self, token: str) -> frozenset[str]:
        return self._routes.get(token, EMPTY)
