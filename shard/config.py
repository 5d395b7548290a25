"""The shard's configuration: one frozen dataclass, built from flags and env vars here only."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass

from common.cli import add_flag, positive


@dataclass(frozen=True)
class ShardConfig:
    shard_id: str
    host: str
    ws_port: int
    grpc_port: int
    advertise_host: str
    redis_url: str
    namespace: str
    heartbeat_s: float
    heartbeat_ttl_s: float
    max_connections: int
    max_frame_bytes: int
    max_tokens_per_request: int
    max_subscriptions_per_client: int
    requests_per_s: float
    request_burst: int
    outbox_frames: int
    outbox_bytes: int
    client_sndbuf_bytes: int
    max_behind_s: float
    ping_interval_s: float
    idle_timeout_s: float
    write_timeout_s: float
    ingest_window_batches: int
    grpc_min_ping_interval_s: float
    ack_timeout_s: float
    gc_freeze_check_s: float
    listen_backlog: int
    log_level: str

    @property
    def grpc_addr(self) -> str:
        return f"{self.advertise_host}:{self.grpc_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.advertise_host}:{self.ws_port}/ws"


def parse_args(argv: list[str] | None = None) -> ShardConfig:
    """Build the config from argv and SHARDCAST_* environment variables."""
    p = argparse.ArgumentParser(prog="python -m shard", description="shardcast WebSocket shard")
    f = lambda *a, **k: add_flag(p, *a, **k)  # noqa: E731
    f("id", "SHARDCAST_SHARD_ID", socket.gethostname(), "shard id, unique in the cluster")
    f("host", "SHARDCAST_HOST", "127.0.0.1", "address to bind the WebSocket and gRPC servers")
    f("ws-port", "SHARDCAST_WS_PORT", 8701, "WebSocket/HTTP port", int)
    f("grpc-port", "SHARDCAST_GRPC_PORT", 9701, "gRPC ingest port", int)
    f("advertise-host", "SHARDCAST_ADVERTISE_HOST", "",
      "host published in the registry (default: --host)")
    f("redis-url", "SHARDCAST_REDIS_URL", "redis://127.0.0.1:6379/0", "registry Redis")
    f("namespace", "SHARDCAST_NAMESPACE", "shardcast", "registry key prefix")
    f("heartbeat-s", "SHARDCAST_HEARTBEAT_S", 1.0, "heartbeat period", positive(float))
    f("heartbeat-ttl-s", "SHARDCAST_HEARTBEAT_TTL_S", 5.0, "liveness TTL", positive(float))
    f("max-connections", "SHARDCAST_MAX_CONNECTIONS", 15000, "refuse upgrades (503) beyond", positive(int))
    f("max-frame-bytes", "SHARDCAST_MAX_FRAME_BYTES", 16384, "largest inbound frame", positive(int))
    f("max-tokens-per-request", "SHARDCAST_MAX_TOKENS_PER_REQUEST", 100, "tokens in one request",
      positive(int))
    f("max-subscriptions", "SHARDCAST_MAX_SUBSCRIPTIONS", 1000, "tokens per connection", positive(int))
    f("requests-per-s", "SHARDCAST_REQUESTS_PER_S", 20.0, "sustained client request rate", positive(float))
    f("request-burst", "SHARDCAST_REQUEST_BURST", 40, "client request burst", positive(int))
    f("outbox-frames", "SHARDCAST_OUTBOX_FRAMES", 2048, "per-client queue before conflation", positive(int))
    f("outbox-bytes", "SHARDCAST_OUTBOX_BYTES", 16 << 20,
      "per-client queued bytes before conflation (4 of the dispatcher's largest batches, so one "
      "burst of big payloads does not conflate a client that reads); a client's memory is at most "
      "this + 64 KiB of replies + one tick per subscribed token, plus its socket's send buffer "
      "in the kernel", positive(int))
    f("client-sndbuf-bytes", "SHARDCAST_CLIENT_SNDBUF_BYTES", 0,
      "SO_SNDBUF of each client socket (the kernel doubles it), e.g. 65536 to bound kernel memory "
      "per client and always have room for a 4008 close frame; 0 leaves it to the kernel's "
      "autotuning, up to net.ipv4.tcp_wmem's maximum (4 MiB); what sits there unread counts as "
      "behind either way", int)
    f("max-behind-s", "SHARDCAST_MAX_BEHIND_S", 5.0,
      "how long a client may stall (data unacknowledged, queued or unread in its socket, and none "
      "acknowledged) or stay conflated before 4008; stalled half as long, its ticks are conflated",
      positive(float))
    f("ping-interval-s", "SHARDCAST_PING_INTERVAL_S", 20.0, "ping clients quiet this long",
      positive(float))
    f("idle-timeout-s", "SHARDCAST_IDLE_TIMEOUT_S", 60.0, "close clients silent this long (4001)",
      positive(float))
    f("write-timeout-s", "SHARDCAST_WRITE_TIMEOUT_S", 10.0, "stuck write before disconnect", positive(float))
    f("ingest-window", "SHARDCAST_INGEST_WINDOW", 32, "unacked batches a dispatcher may send", positive(int))
    f("grpc-min-ping-interval-s", "SHARDCAST_GRPC_MIN_PING_INTERVAL_S", 5.0,
      "shortest keepalive ping interval the ingest port permits; keep it at most half the "
      "dispatchers' --grpc-keepalive-s (pings come a little early at times), or their streams "
      "are reset (GOAWAY too_many_pings)",
      positive(float))
    f("ack-timeout-s", "SHARDCAST_ACK_TIMEOUT_S", 2.0,
      "max wait for registry before a subscribe ack", positive(float))
    f("gc-freeze-check-s", "SHARDCAST_GC_FREEZE_CHECK_S", 5.0,
      "how often to consider gc.freeze() after connection growth (0: never)", float)
    f("listen-backlog", "SHARDCAST_LISTEN_BACKLOG", 4096,
      "pending TCP connections the WebSocket port queues (gevent's default, 128, is small for a "
      "wave of reconnects)", positive(int))
    f("log-level", "SHARDCAST_LOG_LEVEL", "INFO", "logging level")
    a = p.parse_args(argv)
    if a.client_sndbuf_bytes < 0:
        p.error("--client-sndbuf-bytes must be >= 0")
    if a.gc_freeze_check_s < 0:
        p.error("--gc-freeze-check-s must be >= 0")
    if a.heartbeat_ttl_s < 2 * a.heartbeat_s:
        p.error("--heartbeat-ttl-s must be at least twice --heartbeat-s")
    if a.idle_timeout_s <= a.ping_interval_s:
        p.error("--idle-timeout-s must exceed --ping-interval-s")
    return ShardConfig(
        shard_id=a.id,
        host=a.host,
        ws_port=a.ws_port,
        grpc_port=a.grpc_port,
        advertise_host=a.advertise_host or a.host,
        redis_url=a.redis_url,
        namespace=a.namespace,
        heartbeat_s=a.heartbeat_s,
        heartbeat_ttl_s=a.heartbeat_ttl_s,
        max_connections=a.max_connections,
        max_frame_bytes=a.max_frame_bytes,
        max_tokens_per_request=a.max_tokens_per_request,
        max_subscriptions_per_client=a.max_subscriptions,
        requests_per_s=a.requests_per_s,
        request_burst=a.request_burst,
        outbox_frames=a.outbox_frames,
        outbox_bytes=a.outbox_bytes,
        client_sndbuf_bytes=a.client_sndbuf_bytes,
        max_behind_s=a.max_behind_s,
        ping_interval_s=a.ping_interval_s,
        idle_timeout_s=a.idle_timeout_s,
        write_timeout_s=a.write_timeout_s,
        ingest_window_batches=a.ingest_window,
        grpc_min_ping_interval_s=a.grpc_min_ping_interval_s,
        ack_timeout_s=a.ack_timeout_s,
        gc_freeze_check_s=a.gc_freeze_check_s,
        listen_backlog=a.listen_backlog,
        log_level=a.log_level,
    )
