"""The admin API's decisions, free of gRPC: validate, read the dispatcher, act.

Every answer is a small frozen dataclass; `dispatcher.admin_grpc` translates
them to protobuf and `AdminError` codes to gRPC status codes. Kafka and the
shards' control RPC sit behind the `Publisher` and `ShardControl` seams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from common.drain import check_window
from common.records import TOKEN_RE
from common.registry import ShardInfo
from dispatcher.routing import Mode

if TYPE_CHECKING:
    from dispatcher.app import Dispatcher


class AdminCode(StrEnum):
    """Every error the admin API returns (mapped 1:1 to gRPC status codes)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    ABORTED = "aborted"  # a drain cancelled by an undrain while its progress was streamed


class AdminError(Exception):
    def __init__(self, code: AdminCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ShardView:
    shard_id: str
    grpc_addr: str
    ws_addr: str
    state: str  # live | draining | drained | dead
    connections: int
    tokens: int
    heartbeat_age_s: float
    stream_state: str
    queue_depth: int
    records_offered: int
    records_delivered: int
    records_dropped: int


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    position: int
    high_watermark: int
    lag: int


@dataclass(frozen=True)
class StatsView:
    dispatcher_id: str
    mode: Mode
    records_consumed: int
    records_routed: int  # queued for at least one shard (never counts an unrouted record)
    records_dropped: int
    deliveries: int
    records_unrouted: int
    records_invalid: int
    routing_tokens: int
    registry_healthy: bool
    registry_sync_age_s: float
    lag: tuple[PartitionLag, ...]
    fanout: tuple[tuple[str, int, int], ...]  # (shard id, records offered, records dropped)
    uptime_s: float


@dataclass(frozen=True)
class LookupView:
    token: str
    mode: Mode
    shard_ids: tuple[str, ...]
    subscribed_shard_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModeChange:
    previous: Mode
    mode: Mode
    cluster_wide: bool


@dataclass(frozen=True)
class DrainView:
    shard_id: str
    connections: int
    closed: int
    done: bool


@dataclass(frozen=True)
class UndrainView:
    shard_id: str
    previous: str  # live (nothing to undrain) | draining | drained
    state: str  # live


class ShardControl(Protocol):
    """Calls a shard's control RPC (adapter: `admin_grpc.GrpcShardControl`)."""

    def drain(self, grpc_addr: str, shard_id: str, window_s: float) -> Iterator[DrainView]: ...

    def undrain(self, grpc_addr: str, shard_id: str) -> bool:
        """End the shard's drain; True when it was draining or drained."""
        ...


class Publisher(Protocol):
    """Produces one record to the ticks topic (adapter: `dispatcher.publisher`)."""

    def publish(self, token: str, payload: bytes) -> tuple[int, int]: ...


class AdminCore:
    """What each admin RPC does, against one running `Dispatcher`."""

    def __init__(self, d: Dispatcher, control: ShardControl, publisher: Publisher,
                 set_cluster_mode: Callable[[Mode], bool]) -> None:
        self.d = d
        self.control = control
        self.publisher = publisher
        self.set_cluster_mode = set_cluster_mode

    def list_shards(self) -> list[ShardView]:
        d = self.d
        now_ms = time.time() * 1000
        streams = d.streams.stats()
        out = []
        for sid, info in sorted(d.sync.live.items()):
            st = streams.get(sid, {})
            out.append(ShardView(
                sid, info.grpc_addr, info.ws_addr, info.state, info.connections, info.tokens,
                round(max(0.0, now_ms - info.hb_ms) / 1000, 3), str(st.get("state", "")),
                int(st.get("queue_depth", 0)), int(st.get("records_offered", 0)),
                int(st.get("records_sent", 0)), int(st.get("records_dropped", 0)),
            ))
        for sid in sorted(d.sync.dead):
            out.append(ShardView(sid, "", "", "dead", 0, 0, -1.0, "", 0, 0, 0, 0))
        return out

    def stats(self) -> StatsView:
        d = self.d
        rc = d.router.counters
        streams = d.streams.stats()
        dropped = d.streams.dropped_gone + sum(int(s["records_dropped"]) for s in streams.values())
        lag = tuple(PartitionLag(p, pos, high, max(0, high - pos))
                    for p, (pos, high) in sorted(d.loop.lag.items()))
        fanout = tuple((sid, int(s["records_offered"]), int(s["records_dropped"]))
                       for sid, s in sorted(streams.items()))
        routed = rc.records - rc.unrouted  # the router counts every record it saw in `records`
        return StatsView(
            d.cfg.dispatcher_id, d.router.mode, d.loop.records_consumed, routed, dropped,
            rc.deliveries, rc.unrouted, d.loop.records_invalid, len(d.sync.table), d.sync.healthy,
            round(time.time() - d.sync.last_sync_s, 3), lag, fanout, round(time.time() - d.started, 3),
        )

    def lookup(self, token: str) -> LookupView:
        _check_token(token)
        d = self.d
        live = d.streams.routable
        targets = d.router.targets(token, live)
        subscribed = d.sync.shards_for(token) & frozenset(live)
        return LookupView(token, d.router.mode, tuple(sorted(targets)), tuple(sorted(subscribed)))

    def set_mode(self, mode: str) -> ModeChange:
        try:
            new = Mode(mode)
        except ValueError:
            choices = ", ".join(m.value for m in Mode)
            raise AdminError(AdminCode.INVALID_ARGUMENT, f"mode must be one of {choices}") from None
        previous = self.d.router.mode
        self.d.router.mode = new  # this dispatcher at once, whatever Redis says
        return ModeChange(previous, new, self.set_cluster_mode(new))

    def drain(self, shard_id: str, window_s: float) -> Iterator[DrainView]:
        _check_shard_id(shard_id)
        problem = check_window(window_s)
        if problem:
            raise AdminError(AdminCode.INVALID_ARGUMENT, problem)
        info = self._registered(shard_id)
        return self.control.drain(info.grpc_addr, shard_id, window_s)

    def undrain(self, shard_id: str) -> UndrainView:
        """Put a draining or drained shard back into service (it still heartbeats, so it is listed)."""
        info = self._registered(shard_id)
        was_draining = self.control.undrain(info.grpc_addr, shard_id)
        if not was_draining:
            return UndrainView(shard_id, "live", "live")
        # The registry can lag the shard by a heartbeat: a drain it reports live was still draining.
        return UndrainView(shard_id, "draining" if info.state == "live" else info.state, "live")

    def _registered(self, shard_id: str) -> ShardInfo:
        """The heartbeating shard `shard_id` (draining and drained ones included)."""
        _check_shard_id(shard_id)
        info = self.d.sync.live.get(shard_id)
        if info is None:
            raise AdminError(AdminCode.NOT_FOUND, f"no live shard {shard_id!r}")
        return info

    def publish(self, token: str, payload: bytes) -> tuple[int, int]:
        _check_token(token)
        limit = self.d.cfg.max_publish_bytes
        if len(payload) > limit:
            raise AdminError(AdminCode.INVALID_ARGUMENT,
                             f"payload is {len(payload)} bytes, the limit is {limit}")
        return self.publisher.publish(token, payload)


def _check_shard_id(shard_id: str) -> None:
    if not shard_id:
        raise AdminError(AdminCode.INVALID_ARGUMENT, "shard_id is required")


def _check_token(token: str) -> None:
    if not token:
        raise AdminError(AdminCode.INVALID_ARGUMENT, "token is required")
    if not TOKEN_RE.fullmatch(token):
        raise AdminError(AdminCode.INVALID_ARGUMENT,
                         "token must be 1-64 characters of A-Z a-z 0-9 . _ : / -")
