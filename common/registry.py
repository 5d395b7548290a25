"""The Redis registry schema, owned here and nowhere else.

Keys (``ns`` is the namespace, ``shardcast`` by default, so several stacks or
test runs can share one Redis):

* ``{ns}:shards`` — set of every shard id that has registered.
* ``{ns}:shard:{id}`` — hash (grpc, ws, started_ms, hb_ms, period_ms, ttl_ms,
  connections, tokens, state ``live``/``draining``/``drained``)
  with a TTL; it exists exactly while the shard heartbeats, so its presence
  *is* liveness.
* ``{ns}:route:{token}`` — set of shard ids with at least one local subscriber.
* ``{ns}:tokens:{id}`` — the inverse: tokens shard ``id`` has registered, so a
  restarted shard (or a dispatcher's janitor) can undo a dead process's entries,
  and a dispatcher can load the whole table in one command per shard.
* ``{ns}:mode`` — the dispatch mode an operator set at run time (admin API);
  it overrides every dispatcher's ``--mode`` until deleted.
* ``{ns}:changes`` — pub/sub channel; every change to the two sets above is
  published in the same MULTI/EXEC or script, as JSON:
  ``{"op":"route","shard":id,"add":[…],"del":[…]}``, ``{"op":"reset","shard":id}``,
  ``{"op":"up","shard":id}``, ``{"op":"down","shard":id}``,
  ``{"op":"mode","shard":"","value":"targeted"|"broadcast"}``.

A dispatcher subscribes to the channel *before* loading the table, then applies
every change it receives in order: each change sets a (token, shard) pair to a
definite state, so replaying changes over a newer snapshot still converges.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from common.records import TOKEN_RE

_CLEANUP = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local toks = redis.call('SMEMBERS', KEYS[1])
for _, t in ipairs(toks) do redis.call('SREM', ARGV[2] .. t, ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='reset', shard=ARGV[1]}))
return #toks
"""

_HEARTBEAT = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return existed
"""


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """A live shard as its heartbeat describes it."""

    shard_id: str
    grpc_addr: str
    ws_addr: str
    started_ms: int
    hb_ms: int
    connections: int
    tokens: int
    period_ms: int = 0  # how often the shard heartbeats
    ttl_ms: int = 0  # the TTL each heartbeat sets
    state: str = "live"  # "draining" (closing its clients, refusing new ones), then "drained"


@dataclass(frozen=True, slots=True)
class Change:
    """One decoded message of the change feed."""

    op: str
    shard: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    value: str = ""


MAX_CHANGE_BYTES = 8 << 20  # a shard's resync announces every token it holds in one message
CHANGE_OPS = frozenset({"route", "reset", "up", "down", "mode"})
MODES = frozenset({"targeted", "broadcast"})


def decode_change(raw: bytes | str) -> Change | None:
    """Parse a change-feed message against its strict schema; None for anything else.

    Whoever can publish on the channel can send anything: a huge or deeply
    nested message, a non-UTF-8 one, tokens no client may use. Such a message
    is rejected here (the caller counts and logs it), never fatal.
    """
    if len(raw) > MAX_CHANGE_BYTES:
        return None
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(msg, dict):
        return None
    op, shard, value = msg.get("op"), msg.get("shard"), msg.get("value", "")
    add, remove = msg.get("add") or [], msg.get("del") or []
    if op not in CHANGE_OPS or not isinstance(shard, str) or not isinstance(value, str):
        return None
    if op == "mode":
        return Change(op, "", value=value) if value in MODES else None
    if not valid_id(shard) or not _tokens(add) or not _tokens(remove):
        return None
    return Change(op, shard, tuple(add), tuple(remove))


def _tokens(items: object) -> bool:
    return isinstance(items, list) and all(isinstance(t, str) and TOKEN_RE.fullmatch(t) for t in items)


def valid_id(shard_id: str) -> bool:
    """Shard ids follow the token rule: 1-64 of A-Z a-z 0-9 . _ : / -."""
    return TOKEN_RE.fullmatch(shard_id) is not None


class Registry:
    """Reads and writes the schema above through one redis-py client."""

    def __init__(self, client: redis.Redis, namespace: str = "shardcast") -> None:
        self.r = client
        self.ns = namespace
        self.channel = f"{namespace}:changes"
        self._cleanup = client.register_script(_CLEANUP)
        self._heartbeat = client.register_script(_HEARTBEAT)

    # -- key names -------------------------------------------------------
    def shards_key(self) -> str:
        return f"{self.ns}:shards"

    def shard_key(self, shard_id: str) -> str:
        return f"{self.ns}:shard:{shard_id}"

    def route_key(self, token: str) -> str:
        return f"{self.ns}:route:{token}"

    def tokens_key(self, shard_id: str) -> str:
        return f"{self.ns}:tokens:{shard_id}"

    def mode_key(self) -> str:
        return f"{self.ns}:mode"

    # -- shard side ------------------------------------------------------
    def heartbeat(self, info: ShardInfo, ttl_ms: int) -> bool:
        """Refresh the shard's liveness hash; return False if it had expired or was never set."""
        fields = {
            "grpc": info.grpc_addr,
            "ws": info.ws_addr,
            "started_ms": info.started_ms,
            "hb_ms": info.hb_ms,
            "connections": info.connections,
            "tokens": info.tokens,
            "period_ms": info.period_ms,
            "ttl_ms": info.ttl_ms,
            "state": info.state,
        }
        argv: list[object] = [ttl_ms, info.shard_id]
        for k, v in fields.items():
            argv += [k, v]
        keys = [self.shard_key(info.shard_id), self.shards_key()]
        return bool(self._heartbeat(keys=keys, args=argv))

    def announce(self, op: str, shard_id: str) -> None:
        """Publish a shard up/down event so dispatchers refresh liveness at once."""
        self.r.publish(self.channel, json.dumps({"op": op, "shard": shard_id}))

    def cleanup(self, shard_id: str, only_if_dead: bool = False) -> int:
        """Remove shard_id from every route set it registered; -1 if skipped because it is live."""
        keys = [self.tokens_key(shard_id), self.shard_key(shard_id), self.channel]
        args = [shard_id, f"{self.ns}:route:", "1" if only_if_dead else "0"]
        return int(self._cleanup(keys=keys, args=args))

    def apply_routes(self, shard_id: str, add: Iterable[str], remove: Iterable[str]) -> None:
        """Atomically add/remove shard_id in token route sets and announce the change."""
        add, remove = list(add), list(remove)
        if not add and not remove:
            return
        pipe = self.r.pipeline(transaction=True)
        for token in add:
            pipe.sadd(self.route_key(token), shard_id)
        for token in remove:
            pipe.srem(self.route_key(token), shard_id)
        if add:
            pipe.sadd(self.tokens_key(shard_id), *add)
        if remove:
            pipe.srem(self.tokens_key(shard_id), *remove)
        msg = {"op": "route", "shard": shard_id, "add": add, "del": remove}
        pipe.publish(self.channel, json.dumps(msg, separators=(",", ":")))
        pipe.execute()

    def registered_tokens(self, shard_id: str) -> set[str]:
        """The tokens Redis holds for a shard (what its resync compares with the local truth)."""
        return {t.decode("utf-8", "replace") for t in self.r.smembers(self.tokens_key(shard_id))}

    def deregister(self, shard_id: str) -> None:
        """Clean shutdown: drop routes, liveness and membership, then announce."""
        self.cleanup(shard_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.shard_key(shard_id))
        pipe.srem(self.shards_key(), shard_id)
        pipe.publish(self.channel, json.dumps({"op": "down", "shard": shard_id}))
        pipe.execute()

    # -- dispatcher side -------------------------------------------------
    def load_shards(self, slack_ms: int = 0) -> tuple[dict[str, ShardInfo], list[str]]:
        """Return (live shards by id, ids registered but no longer heartbeating).

        A shard whose liveness key has less than `expiry_margin_ms` left counts
        as dead already, so a reader that re-reads well within `slack_ms` drops a
        silent shard before its TTL runs out, by Redis's own clock (no skew).
        """
        ids = sorted(filter(None, map(_member_id, self.r.smembers(self.shards_key()))))
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self.shard_key(sid))
            pipe.pttl(self.shard_key(sid))
        replies = pipe.execute()
        live: dict[str, ShardInfo] = {}
        dead: list[str] = []
        for i, sid in enumerate(ids):
            info = _shard_info(sid, replies[2 * i])
            if info is None or 0 <= replies[2 * i + 1] < expiry_margin_ms(info, slack_ms):
                dead.append(sid)
            else:
                live[sid] = info
        return live, dead

    def load_routes(self, shard_ids: Iterable[str]) -> dict[str, set[str]]:
        """Load token → shard ids from each shard's token list (one SMEMBERS per shard)."""
        ids = list(shard_ids)
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.smembers(self.tokens_key(sid))
        table: dict[str, set[str]] = {}
        for sid, tokens in zip(ids, pipe.execute(), strict=True):
            for raw in tokens:
                token = _member_id(raw)  # same rule: anything else is not a route
                if token is not None:
                    table.setdefault(token, set()).add(sid)
        return table

    def forget(self, shard_id: str) -> bool:
        """Janitor: clean up a dead shard's entries unless it came back meanwhile."""
        if self.cleanup(shard_id, only_if_dead=True) < 0:
            return False
        self.r.srem(self.shards_key(), shard_id)
        return True

    def set_mode(self, mode: str) -> None:
        """Store the cluster's dispatch mode and tell every dispatcher now."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.mode_key(), mode)
        pipe.publish(self.channel, json.dumps({"op": "mode", "shard": "", "value": mode}))
        pipe.execute()

    def get_mode(self) -> str | None:
        """The stored dispatch mode, None when no operator has set one."""
        raw = self.r.get(self.mode_key())
        return None if raw is None else raw.decode()

    def route_of(self, token: str) -> set[str]:
        """The stored route set of one token (a Redis round trip: tools and tests only)."""
        return {m.decode() for m in self.r.smembers(self.route_key(token))}


def _member_id(raw: bytes) -> str | None:
    """A shard id read from Redis, or None for a member no shard could have written."""
    try:
        sid = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return sid if valid_id(sid) else None


def _shard_info(shard_id: str, h: Mapping[bytes, bytes]) -> ShardInfo | None:
    if not h:
        return None
    try:
        return ShardInfo(
            shard_id=shard_id,
            grpc_addr=h[b"grpc"].decode(),
            ws_addr=h[b"ws"].decode(),
            started_ms=int(h[b"started_ms"]),
            hb_ms=int(h[b"hb_ms"]),
            connections=int(h.get(b"connections", 0)),
            tokens=int(h.get(b"tokens", 0)),
            period_ms=int(h.get(b"period_ms", 0)),
            ttl_ms=int(h.get(b"ttl_ms", 0)),
            state=h.get(b"state", b"live").decode(),
        )
    except (KeyError, ValueError):  # UnicodeDecodeError included: a forged hash is no shard
        return None


def expiry_margin_ms(info: ShardInfo, slack_ms: int) -> int:
    """How long before its key expires a silent shard is already counted dead.

    `slack_ms` covers the reader's refresh period and scheduling delays; it is
    capped at the shard's TTL minus two heartbeat periods, so a live shard,
    whose key never drops below TTL minus one period, is never taken for dead.
    A shard that did not publish its timings gets no margin.
    """
    if info.ttl_ms <= 0 or info.period_ms <= 0:
        return 0
    return max(0, min(slack_ms, info.ttl_ms - 2 * info.period_ms))


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of every timestamp in the registry."""
    return int(time.time() * 1000)
