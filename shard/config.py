"""The shard's configuration: one frozen dataclass, built from flags and env vars here only."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import (
    add_flag,
    add_secret,
    host_port,
    is_loopback,
    positive,
    readable_files,
    redis_url,
    secret,
)
from shard.auth import GOOD_HS256_SECRET_BYTES, Verifier, hs256_verifier, jwks_verifier, pem_verifier


@dataclass(frozen=True)
class ShardConfig:
    shard_id: str
    host: str
    ws_port: int
    grpc_port: int
    grpc_host: str  # the internal ingest/control port binds here, apart from the WebSocket's --host
    ingest_secret: str = field(repr=False)  # every gRPC call must present it
    grpc_tls_cert: str
    grpc_tls_key: str
    grpc_tls_client_ca: str  # set: mutual TLS, callers need a certificate this CA signed
    advertise_host: str
    grpc_advertise_host: str
    redis_url: str = field(repr=False)  # may carry a password
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
    ports_file: str  # set: the bound ports (ws_port, grpc_port) as JSON, once both are bound
    log_level: str
    # The client edge (shard.auth, README "Client protocol"):
    auth: str  # "off" or "jwt"
    verifier: Verifier | None = field(repr=False)  # set when auth is "jwt"
    auth_timeout_s: float
    allowed_origins: tuple[str, ...]  # () = the request's own Host; ("*",) = any
    max_connections_per_ip: int
    max_shard_tokens: int

    @property
    def grpc_addr(self) -> str:
        return host_port(self.grpc_advertise_host, self.grpc_port)

    @property
    def ws_url(self) -> str:
        return f"ws://{host_port(self.advertise_host, self.ws_port)}/ws"


def parse_args(argv: list[str] | None = None) -> ShardConfig:
    """Build the config from argv and SHARDCAST_* environment variables."""
    p = argparse.ArgumentParser(prog="python -m shard", description="shardcast WebSocket shard")
    f = lambda *a, **k: add_flag(p, *a, **k)  # noqa: E731
    f("id", "SHARDCAST_SHARD_ID", socket.gethostname(), "shard id, unique in the cluster")
    f("host", "SHARDCAST_HOST", "127.0.0.1", "address to bind the WebSocket/HTTP server")
    f("ws-port", "SHARDCAST_WS_PORT", 8701, "WebSocket/HTTP port (0: any free port, see --ports-file)",
      int)
    f("grpc-host", "SHARDCAST_GRPC_HOST", "127.0.0.1",
      "address to bind the internal gRPC port (ingest, drain); beyond loopback only with the "
      "ingest secret or mutual TLS")
    f("grpc-port", "SHARDCAST_GRPC_PORT", 9701, "gRPC ingest port (0: any free port)", int)
    add_secret(p, "ingest-secret", "SHARDCAST_INGEST_SECRET", "ingest secret")
    f("grpc-tls-cert", "SHARDCAST_GRPC_TLS_CERT", "", "PEM certificate: serve the gRPC port over TLS")
    f("grpc-tls-key", "SHARDCAST_GRPC_TLS_KEY", "", "PEM private key of --grpc-tls-cert")
    f("grpc-tls-client-ca", "SHARDCAST_GRPC_TLS_CLIENT_CA", "",
      "PEM CA bundle: require callers' certificates signed by it (mutual TLS)")
    f("advertise-host", "SHARDCAST_ADVERTISE_HOST", "",
      "host published in the registry (default: --host for WebSocket, --grpc-host for gRPC)")
    f("redis-url", "SHARDCAST_REDIS_URL", "redis://127.0.0.1:6379/0",
      "registry Redis (rediss:// for TLS); one with a password belongs in the env or --redis-url-file")
    p.add_argument("--redis-url-file", default=os.environ.get("SHARDCAST_REDIS_URL_FILE", ""),
                   metavar="PATH", help="file holding the Redis URL [env SHARDCAST_REDIS_URL_FILE]")
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
    f("ports-file", "SHARDCAST_PORTS_FILE", "",
      "write the ports bound (JSON: ws_port, grpc_port) to this file, atomically, once both are "
      "bound: how a starter learns the ports the kernel chose for port 0")
    f("log-level", "SHARDCAST_LOG_LEVEL", "INFO", "logging level")
    _client_edge_flags(p)
    a = p.parse_args(argv)
    a.redis_url = redis_url(p, a.redis_url, a.redis_url_file, "SHARDCAST_REDIS_URL")
    a.ingest_secret = secret(p, a.ingest_secret_file, "SHARDCAST_INGEST_SECRET")
    _check_grpc(p, a)
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
        grpc_host=a.grpc_host,
        ingest_secret=a.ingest_secret,
        grpc_tls_cert=a.grpc_tls_cert,
        grpc_tls_key=a.grpc_tls_key,
        grpc_tls_client_ca=a.grpc_tls_client_ca,
        advertise_host=a.advertise_host or a.host,
        grpc_advertise_host=a.advertise_host or a.grpc_host,
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
        ports_file=a.ports_file,
        log_level=a.log_level,
        auth=a.auth,
        verifier=_verifier(p, a),
        auth_timeout_s=a.auth_timeout_s,
        allowed_origins=_origins(a.allowed_origins),
        max_connections_per_ip=a.max_connections_per_ip,
        max_shard_tokens=a.max_shard_tokens,
    )


def advisories(cfg: ShardConfig) -> list[str]:
    """Settings that are allowed (tests and odd deployments use them) but likely a mistake:
    the shard logs each at start-up instead of refusing to run."""
    out = []
    if cfg.max_behind_s >= cfg.write_timeout_s:
        out.append(f"--max-behind-s ({cfg.max_behind_s:g}) is not below --write-timeout-s "
                   f"({cfg.write_timeout_s:g}): a client stuck on a full socket is reset without "
                   "a close frame before its 4008 can be sent")
    return out


def _client_edge_flags(p: argparse.ArgumentParser) -> None:
    """Authentication, Origin policy and caps of the WebSocket edge."""
    f = lambda *a, **k: add_flag(p, *a, **k)  # noqa: E731
    f("auth", "SHARDCAST_AUTH", "off",
      "client authentication: jwt (a signed token per connection) or off (anyone)",
      choices=["off", "jwt"])
    add_secret(p, "jwt-secret", "SHARDCAST_JWT_SECRET",
               "HS256 secret of client tokens (>= 16 bytes, 32 random bytes recommended)")
    f("jwt-public-key-file", "SHARDCAST_JWT_PUBLIC_KEY_FILE", "",
      "PEM public key (RSA: RS256, EC P-256: ES256) verifying client tokens")
    f("jwt-jwks-file", "SHARDCAST_JWT_JWKS_FILE", "",
      "JWKS document of RSA / EC P-256 keys verifying client tokens (chosen by kid)")
    f("jwt-audience", "SHARDCAST_JWT_AUDIENCE", "", "required aud claim (empty: not checked)")
    f("jwt-issuer", "SHARDCAST_JWT_ISSUER", "", "required iss claim (empty: not checked)")
    f("auth-timeout-s", "SHARDCAST_AUTH_TIMEOUT_S", 10.0,
      "a connection without a valid token this long after the upgrade is closed (4012)",
      positive(float))
    f("allowed-origins", "SHARDCAST_ALLOWED_ORIGINS", "",
      "comma list of exact Origins a browser may connect from, * for any (empty: the request's "
      "own Host); requests without Origin (non-browser clients) are not affected")
    f("max-connections-per-ip", "SHARDCAST_MAX_CONNECTIONS_PER_IP", 1000,
      "upgrades from one peer address beyond this get 429 (behind a proxy every client has the "
      "proxy's address: raise it there and cap per client at the proxy)", positive(int))
    f("max-shard-tokens", "SHARDCAST_MAX_SHARD_TOKENS", 200_000,
      "distinct tokens this shard carries; a subscribe that would exceed it gets a capacity error "
      "(bounds the registry's size whatever clients ask for)", positive(int))


def _origins(raw: str) -> tuple[str, ...]:
    """Normalised origins of --allowed-origins (lower case, no trailing slash)."""
    return tuple(o.strip().lower().rstrip("/") for o in raw.split(",") if o.strip())


def _verifier(p: argparse.ArgumentParser, a: argparse.Namespace) -> Verifier | None:
    """The client-token verifier for --auth jwt, from exactly one key source; None when off."""
    if a.auth != "jwt":
        return None
    hs = secret(p, a.jwt_secret_file, "SHARDCAST_JWT_SECRET")
    if len([s for s in (hs, a.jwt_public_key_file, a.jwt_jwks_file) if s]) != 1:
        p.error("--auth jwt needs exactly one key: $SHARDCAST_JWT_SECRET or --jwt-secret-file, "
                "--jwt-public-key-file, or --jwt-jwks-file")
    aud, iss = a.jwt_audience or None, a.jwt_issuer or None
    if hs and len(hs.encode()) < GOOD_HS256_SECRET_BYTES:
        logging.getLogger(__name__).warning(
            "the client-token secret is under %d bytes: use 32 random bytes", GOOD_HS256_SECRET_BYTES)
    try:
        if hs:
            return hs256_verifier(hs.encode(), aud, iss)
        if a.jwt_public_key_file:
            return pem_verifier(Path(a.jwt_public_key_file).read_bytes(), aud, iss)
        return jwks_verifier(Path(a.jwt_jwks_file).read_text(), aud, iss)
    except (OSError, ValueError) as exc:
        p.error(f"client-token key: {exc}")
        raise  # unreachable: p.error exits


def _check_grpc(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """The gRPC port can push ticks to clients and drain the shard: off loopback it must authenticate."""
    if bool(a.grpc_tls_cert) != bool(a.grpc_tls_key):
        p.error("--grpc-tls-cert and --grpc-tls-key go together")
    if a.grpc_tls_client_ca and not a.grpc_tls_cert:
        p.error("--grpc-tls-client-ca needs --grpc-tls-cert/--grpc-tls-key (mutual TLS is TLS)")
    readable_files(p, grpc_tls_cert=a.grpc_tls_cert, grpc_tls_key=a.grpc_tls_key,
                   grpc_tls_client_ca=a.grpc_tls_client_ca)
    if not a.ingest_secret and not a.grpc_tls_client_ca and not is_loopback(a.grpc_host):
        p.error("--grpc-host beyond loopback needs the ingest secret (SHARDCAST_INGEST_SECRET or "
                "--ingest-secret-file) or mutual TLS (--grpc-tls-client-ca)")
