"""gRPC adapter of the admin API: protobuf ⇄ `admin_core`, auth, health, reflection, TLS.

With the shard-control client, the only dispatcher modules besides
`grpc_out` that import generated code.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from shardcast.v1 import admin_pb2, admin_pb2_grpc, control_pb2, control_pb2_grpc

from common.cli import host_port
from common.grpc_auth import deny
from dispatcher.admin_core import AdminCode, AdminCore, AdminError, DrainView
from dispatcher.config import DispatcherConfig
from dispatcher.grpc_out import ShardAuth
from dispatcher.routing import Mode

log = logging.getLogger(__name__)
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["DispatcherAdmin"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Probes (load balancers, orchestrators) cannot send credentials; health says only SERVING or not.
UNAUTHENTICATED_PREFIXES = (f"/{HEALTH_SERVICE}/",)
STATUS = {
    AdminCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    AdminCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    AdminCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    AdminCode.ABORTED: grpc.StatusCode.ABORTED,
}
UNDRAIN_TIMEOUT_S = 10.0
MODES = {Mode.TARGETED: admin_pb2.DISPATCH_MODE_TARGETED, Mode.BROADCAST: admin_pb2.DISPATCH_MODE_BROADCAST}
MODE_NAMES = {v: k.value for k, v in MODES.items()}
STATES = {"live": admin_pb2.SHARD_STATE_LIVE, "draining": admin_pb2.SHARD_STATE_DRAINING,
          "drained": admin_pb2.SHARD_STATE_DRAINED, "dead": admin_pb2.SHARD_STATE_DEAD}


class AdminServicer(admin_pb2_grpc.DispatcherAdminServicer):
    """Each method: translate the request, call the core, translate the answer or error."""

    def __init__(self, core: AdminCore) -> None:
        self.core = core

    def ListShards(self, request, context):  # noqa: N802
        views = _run(context, self.core.list_shards)
        return admin_pb2.ListShardsResponse(shards=[
            admin_pb2.ShardStatus(
                shard_id=v.shard_id, grpc_addr=v.grpc_addr, ws_addr=v.ws_addr,
                state=STATES.get(v.state, admin_pb2.SHARD_STATE_UNSPECIFIED),
                connections=v.connections, tokens=v.tokens, heartbeat_age_s=v.heartbeat_age_s,
                stream_state=v.stream_state, queue_depth=v.queue_depth,
                records_offered=v.records_offered, records_delivered=v.records_delivered,
                records_dropped=v.records_dropped,
            ) for v in views
        ])

    def GetStats(self, request, context):  # noqa: N802
        s = _run(context, self.core.stats)
        return admin_pb2.GetStatsResponse(
            dispatcher_id=s.dispatcher_id, mode=MODES[s.mode], records_consumed=s.records_consumed,
            records_routed=s.records_routed, records_dropped=s.records_dropped,
            deliveries=s.deliveries, records_unrouted=s.records_unrouted,
            records_invalid=s.records_invalid, routing_tokens=s.routing_tokens,
            registry_healthy=s.registry_healthy, registry_sync_age_s=s.registry_sync_age_s,
            lag=[admin_pb2.PartitionLag(partition=p.partition, position=p.position,
                                        high_watermark=p.high_watermark, lag=p.lag) for p in s.lag],
            fanout=[admin_pb2.ShardFanout(shard_id=sid, records_offered=off, records_dropped=drop)
                    for sid, off, drop in s.fanout],
            uptime_s=s.uptime_s,
        )

    def LookupToken(self, request, context):  # noqa: N802
        v = _run(context, self.core.lookup, request.token)
        return admin_pb2.LookupTokenResponse(token=v.token, mode=MODES[v.mode], shard_ids=v.shard_ids,
                                             subscribed_shard_ids=v.subscribed_shard_ids)

    def SetDispatchMode(self, request, context):  # noqa: N802
        change = _run(context, self.core.set_mode, MODE_NAMES.get(request.mode, ""))
        return admin_pb2.SetDispatchModeResponse(previous=MODES[change.previous], mode=MODES[change.mode],
                                                 cluster_wide=change.cluster_wide)

    def DrainShard(self, request, context):  # noqa: N802
        views = _run(context, self.core.drain, request.shard_id, request.window_s)
        try:
            for v in views:
                state = admin_pb2.SHARD_STATE_DRAINED if v.done else admin_pb2.SHARD_STATE_DRAINING
                yield admin_pb2.DrainProgress(shard_id=v.shard_id, state=state, connections=v.connections,
                                              closed=v.closed, done=v.done)
        except AdminError as exc:
            context.abort(STATUS[exc.code], exc.message)

    def UndrainShard(self, request, context):  # noqa: N802
        v = _run(context, self.core.undrain, request.shard_id)
        unknown = admin_pb2.SHARD_STATE_UNSPECIFIED  # a state string no shard writes
        return admin_pb2.UndrainShardResponse(shard_id=v.shard_id, previous=STATES.get(v.previous, unknown),
                                              state=STATES.get(v.state, unknown))

    def Publish(self, request, context):  # noqa: N802
        partition, offset = _run(context, self.core.publish, request.token, request.payload)
        return admin_pb2.PublishResponse(partition=partition, offset=offset)


def _run(context: grpc.ServicerContext, fn: Callable, *args):
    try:
        return fn(*args)
    except AdminError as exc:
        context.abort(STATUS[exc.code], exc.message)


class GrpcShardControl:
    """`admin_core.ShardControl` over a shard's `ShardControl` service (same credentials as ingest)."""

    def __init__(self, auth: ShardAuth | None = None) -> None:
        self.auth = auth or ShardAuth()

    def drain(self, grpc_addr: str, shard_id: str, window_s: float) -> Iterator[DrainView]:
        try:
            with self.auth.channel(grpc_addr) as channel:
                stub = control_pb2_grpc.ShardControlStub(channel)
                request = control_pb2.DrainRequest(window_s=window_s)
                for st in stub.Drain(request, metadata=self.auth.metadata()):
                    yield DrainView(st.shard_id or shard_id, st.connections, st.closed, st.done)
        except grpc.RpcError as exc:
            raise _shard_error(exc, shard_id, grpc_addr) from exc

    def undrain(self, grpc_addr: str, shard_id: str) -> bool:
        try:
            with self.auth.channel(grpc_addr) as channel:
                stub = control_pb2_grpc.ShardControlStub(channel)
                answer = stub.Undrain(control_pb2.UndrainRequest(), metadata=self.auth.metadata(),
                                      timeout=UNDRAIN_TIMEOUT_S)
                return answer.was_draining
        except grpc.RpcError as exc:
            raise _shard_error(exc, shard_id, grpc_addr) from exc


def _shard_error(exc: grpc.RpcError, shard_id: str, grpc_addr: str) -> AdminError:
    """A failed shard-control call as the admin API reports it (ABORTED passes through)."""
    code = AdminCode.ABORTED if exc.code() == grpc.StatusCode.ABORTED else AdminCode.UNAVAILABLE
    return AdminError(code, f"shard {shard_id} at {grpc_addr}: {exc.details()}")


class BearerAuth(grpc.ServerInterceptor):
    """Rejects every call without `authorization: Bearer <token>` (health checks excepted)."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        got = dict(handler_call_details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(got.encode(), self.expected):
            return handler
        return deny(handler, "missing or wrong bearer token")


class AdminServer:
    """The admin gRPC server: admin service, health (fed by `healthy`), reflection."""

    def __init__(self, cfg: DispatcherConfig, core: AdminCore, healthy: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.healthy = healthy
        interceptors = [BearerAuth(cfg.admin_token)] if cfg.admin_token else []
        # No SO_REUSEPORT: a port in use fails the bind instead of being shared with its owner.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=interceptors,
                                  options=[("grpc.so_reuseport", 0)])
        admin_pb2_grpc.add_DispatcherAdminServicer_to_server(AdminServicer(core), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (ADMIN_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server)
        self.port = self._bind()  # the port bound: --admin-port 0 picks any free port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._health_loop, name="admin-health", daemon=True)

    def _bind(self) -> int:
        addr = host_port(self.cfg.admin_host, self.cfg.admin_port)
        if not self.cfg.admin_tls_cert:
            return self.server.add_insecure_port(addr)
        creds = grpc.ssl_server_credentials([(Path(self.cfg.admin_tls_key).read_bytes(),
                                              Path(self.cfg.admin_tls_cert).read_bytes())])
        return self.server.add_secure_port(addr, creds)

    def start(self) -> None:
        self.server.start()
        self._thread.start()
        log.info("admin API on %s:%d tls=%s auth=%s", self.cfg.admin_host, self.port,
                 bool(self.cfg.admin_tls_cert), bool(self.cfg.admin_token))

    def _health_loop(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while not self._stop.is_set():
            status = serving if self.healthy() else not_serving
            for name in ("", ADMIN_SERVICE):
                self.health.set(name, status)
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace=1).wait(2)
