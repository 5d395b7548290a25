"""The dispatcher's configuration: one frozen dataclass, built from flags and env vars here only."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field

from common.cli import (
    add_flag,
    add_secret,
    is_loopback,
    non_negative,
    positive,
    readable_files,
    redis_url,
    secret,
)
from dispatcher.routing import Mode
from dispatcher.shard_addrs import DEFAULT_NETWORKS, Network, parse_networks


@dataclass(frozen=True)
class DispatcherConfig:
    dispatcher_id: str
    kafka_bootstrap: str
    topic: str
    group: str
    offset_reset: str
    redis_url: str = field(repr=False)  # may carry a password
    namespace: str
    mode: Mode
    http_host: str
    http_port: int
    max_poll_records: int
    max_batch_records: int
    shard_queue_records: int
    commit_interval_s: float
    registry_refresh_s: float
    janitor_grace_s: float
    backoff_cap_s: float
    kafka_session_timeout_s: float
    kafka_heartbeat_s: float
    kafka_reconnect_backoff_max_s: float
    kafka_fetch_linger_ms: int
    kafka_fetch_batch_bytes: int
    kafka_fetch_wait_ms: int
    grpc_keepalive_s: float
    grpc_keepalive_timeout_s: float
    stream_ping_s: float
    stream_liveness_s: float
    reregister_grace_s: float
    last_values_max: int
    shard_networks: tuple[Network, ...]
    table_reload_s: float
    max_table_age_s: float
    admin_host: str
    admin_port: int
    admin_token: str = field(repr=False)  # a secret: kept out of logs
    admin_tls_cert: str
    admin_tls_key: str
    admin_insecure: bool
    ingest_secret: str = field(repr=False)  # presented to shards on every ingest and drain call
    shard_tls_ca: str
    shard_tls_cert: str
    shard_tls_key: str
    max_publish_bytes: int
    route_lookup: str
    ports_file: str  # set: the bound ports (http_port, admin_port) as JSON, once both are bound
    log_level: str


def parse_args(argv: list[str] | None = None) -> DispatcherConfig:
    """Build the config from argv and SHARDCAST_* environment variables."""
    p = argparse.ArgumentParser(prog="python -m dispatcher", description="shardcast dispatcher")
    f = lambda *a, **k: add_flag(p, *a, **k)  # noqa: E731
    f("id", "SHARDCAST_DISPATCHER_ID", socket.gethostname(), "dispatcher id (logs, Kafka client id)")
    f("kafka-bootstrap", "SHARDCAST_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers")
    f("topic", "SHARDCAST_TOPIC", "ticks", "Kafka topic of ticks (key = token)")
    f("group", "SHARDCAST_GROUP", "shardcast-dispatchers", "Kafka consumer group")
    f("offset-reset", "SHARDCAST_OFFSET_RESET", "latest", "where a new group starts",
      choices=["latest", "earliest"])
    f("redis-url", "SHARDCAST_REDIS_URL", "redis://127.0.0.1:6379/0",
      "registry Redis (rediss:// for TLS); one with a password belongs in the env or --redis-url-file")
    p.add_argument("--redis-url-file", default=os.environ.get("SHARDCAST_REDIS_URL_FILE", ""),
                   metavar="PATH", help="file holding the Redis URL [env SHARDCAST_REDIS_URL_FILE]")
    f("namespace", "SHARDCAST_NAMESPACE", "shardcast", "registry key prefix")
    f("mode", "SHARDCAST_MODE", "targeted", "dispatch mode", choices=[m.value for m in Mode])
    f("http-host", "SHARDCAST_HTTP_HOST", "127.0.0.1", "status HTTP bind address")
    f("http-port", "SHARDCAST_HTTP_PORT", 8700,
      "status HTTP port (/healthz, /stats, /route; 0: any free port, see --ports-file)", int)
    f("max-poll-records", "SHARDCAST_MAX_POLL_RECORDS", 5000, "records per Kafka poll", positive(int))
    f("max-batch-records", "SHARDCAST_MAX_BATCH_RECORDS", 1000, "records per gRPC batch", positive(int))
    f("shard-queue-records", "SHARDCAST_SHARD_QUEUE_RECORDS", 100_000,
      "per-shard buffer before dropping oldest", positive(int))
    f("commit-interval-s", "SHARDCAST_COMMIT_INTERVAL_S", 1.0, "offset commit period", positive(float))
    f("registry-refresh-s", "SHARDCAST_REGISTRY_REFRESH_S", 0.5, "live-shard re-read period",
      positive(float))
    f("janitor-grace-s", "SHARDCAST_JANITOR_GRACE_S", 30.0,
      "remove routes of shards dead this long", positive(float))
    f("backoff-cap-s", "SHARDCAST_BACKOFF_CAP_S", 5.0, "longest reconnect delay", positive(float))
    f("kafka-session-timeout-s", "SHARDCAST_KAFKA_SESSION_TIMEOUT_S", 6.0,
      "consumer-group session timeout: a dead dispatcher's partitions move after this "
      "(the broker's group.min.session.timeout.ms, 6 s by default, is the floor)", positive(float))
    f("kafka-heartbeat-s", "SHARDCAST_KAFKA_HEARTBEAT_S", 0.5,
      "consumer-group heartbeat: how fast this dispatcher joins a rebalance (its own partitions "
      "pause about this long, since kafka-python rebalances eagerly)", positive(float))
    f("kafka-reconnect-backoff-max-s", "SHARDCAST_KAFKA_RECONNECT_BACKOFF_MAX_S", 1.0,
      "longest pause between reconnects to a Kafka broker (bounds the delay after a broker restart)",
      positive(float))
    f("kafka-fetch-linger-ms", "SHARDCAST_KAFKA_FETCH_LINGER_MS", 10,
      "while records flow, the broker holds each fetch up to this long (or until "
      "--kafka-fetch-batch-bytes are ready), so what arrives meanwhile travels as one poll and "
      "one batch per shard: the most latency this adds, for about a third less CPU per delivered "
      "frame; after two lingers (at least 0.1 s) without a record, fetches answer at the first "
      "record again (0: always)",
      non_negative(int))
    f("kafka-fetch-batch-bytes", "SHARDCAST_KAFKA_FETCH_BATCH_BYTES", 64 << 10,
      "while records flow, the broker answers a fetch as soon as this much is ready", positive(int))
    f("kafka-fetch-wait-ms", "SHARDCAST_KAFKA_FETCH_WAIT_MS", 500,
      "with no record ready, the broker answers a fetch after this long: an idle topic costs a "
      "fetch round trip this often", positive(int))
    f("grpc-keepalive-s", "SHARDCAST_GRPC_KEEPALIVE_S", 10.0,
      "HTTP/2 keepalive ping period on shard streams; shards must permit it "
      "(their --grpc-min-ping-interval-s must be at most half of it)", positive(float))
    f("grpc-keepalive-timeout-s", "SHARDCAST_GRPC_KEEPALIVE_TIMEOUT_S", 5.0,
      "a shard stream whose keepalive ping gets no answer this long is reset", positive(float))
    f("stream-ping-s", "SHARDCAST_STREAM_PING_S", 1.0,
      "an idle shard stream carries an empty batch this often; its ack proves the shard alive",
      positive(float))
    f("stream-liveness-s", "SHARDCAST_STREAM_LIVENESS_S", 3.0,
      "a shard missing from the registry stays routed while its stream acked within this long "
      "(a Redis restart is not a shard death)", positive(float))
    f("reregister-grace-s", "SHARDCAST_REREGISTER_GRACE_S", 3.0,
      "after reconnecting to Redis, broadcast this long before trusting the reloaded routes "
      "(shards re-register within one heartbeat)", positive(float))
    f("shard-networks", "SHARDCAST_SHARD_NETWORKS", DEFAULT_NETWORKS,
      "CIDRs a shard's registered gRPC address must fall in (registry contents are untrusted; "
      "default: loopback and private ranges)")
    f("table-reload-s", "SHARDCAST_TABLE_RELOAD_S", 30.0,
      "reload the whole routing table this often (repairs a lost or forged change-feed message)",
      positive(float))
    f("max-table-age-s", "SHARDCAST_MAX_TABLE_AGE_S", 10.0,
      "health (/healthz, gRPC health) fails when the registry has not answered for this long",
      positive(float))
    f("last-values-max", "SHARDCAST_LAST_VALUES_MAX", 100_000,
      "tokens whose newest record is kept for snapshots and resyncs (least recently updated "
      "forgotten beyond; bounds memory whatever keys producers send)", positive(int))
    f("admin-host", "SHARDCAST_ADMIN_HOST", "127.0.0.1",
      "gRPC admin API bind address (beyond loopback only with a token, and TLS or --admin-insecure)")
    f("admin-port", "SHARDCAST_ADMIN_PORT", 8790, "gRPC admin API port (0: any free port)", int)
    add_secret(p, "admin-token", "SHARDCAST_ADMIN_TOKEN", "admin bearer token")
    f("admin-tls-cert", "SHARDCAST_ADMIN_TLS_CERT", "", "PEM certificate: serve the admin API over TLS")
    f("admin-tls-key", "SHARDCAST_ADMIN_TLS_KEY", "", "PEM private key of --admin-tls-cert")
    p.add_argument("--admin-insecure", action="store_true",
                   default=os.environ.get("SHARDCAST_ADMIN_INSECURE", "") not in ("", "0", "false"),
                   help="allow the admin API beyond loopback without TLS (token in cleartext) "
                        "[env SHARDCAST_ADMIN_INSECURE; default off]")
    add_secret(p, "ingest-secret", "SHARDCAST_INGEST_SECRET", "shards' ingest secret")
    f("shard-tls-ca", "SHARDCAST_SHARD_TLS_CA", "",
      "PEM CA bundle: dial shards over TLS, verifying their certificates")
    f("shard-tls-cert", "SHARDCAST_SHARD_TLS_CERT", "",
      "PEM client certificate presented to shards (mutual TLS; needs --shard-tls-ca)")
    f("shard-tls-key", "SHARDCAST_SHARD_TLS_KEY", "", "PEM private key of --shard-tls-cert")
    f("max-publish-bytes", "SHARDCAST_MAX_PUBLISH_BYTES", 1 << 20, "largest payload Publish accepts",
      positive(int))
    f("route-lookup", "SHARDCAST_ROUTE_LOOKUP", "table",
      "where routes come from: the local table; redis-per-record / redis-per-batch are benchmark "
      "baselines (a Redis round trip per record / per poll)",
      choices=["table", "redis-per-batch", "redis-per-record"])
    f("ports-file", "SHARDCAST_PORTS_FILE", "",
      "write the ports bound (JSON: http_port, admin_port) to this file, atomically, once both "
      "are bound: how a starter learns the ports the kernel chose for port 0")
    f("log-level", "SHARDCAST_LOG_LEVEL", "INFO", "logging level")
    a = p.parse_args(argv)
    a.redis_url = redis_url(p, a.redis_url, a.redis_url_file, "SHARDCAST_REDIS_URL")
    a.admin_token = secret(p, a.admin_token_file, "SHARDCAST_ADMIN_TOKEN")
    a.ingest_secret = secret(p, a.ingest_secret_file, "SHARDCAST_INGEST_SECRET")
    _check_admin(p, a)
    _check_shard_tls(p, a)
    if a.shard_queue_records < a.max_poll_records:
        p.error("--shard-queue-records must be >= --max-poll-records (a poll must fit a queue)")
    try:
        networks = parse_networks(a.shard_networks)
    except ValueError as exc:
        p.error(f"--shard-networks: {exc}")
    if a.kafka_heartbeat_s * 3 > a.kafka_session_timeout_s:
        p.error("--kafka-heartbeat-s must be at most a third of --kafka-session-timeout-s")
    return DispatcherConfig(
        dispatcher_id=a.id,
        kafka_bootstrap=a.kafka_bootstrap,
        topic=a.topic,
        group=a.group,
        offset_reset=a.offset_reset,
        redis_url=a.redis_url,
        namespace=a.namespace,
        mode=Mode(a.mode),
        http_host=a.http_host,
        http_port=a.http_port,
        max_poll_records=a.max_poll_records,
        max_batch_records=a.max_batch_records,
        shard_queue_records=a.shard_queue_records,
        commit_interval_s=a.commit_interval_s,
        registry_refresh_s=a.registry_refresh_s,
        janitor_grace_s=a.janitor_grace_s,
        backoff_cap_s=a.backoff_cap_s,
        kafka_session_timeout_s=a.kafka_session_timeout_s,
        kafka_heartbeat_s=a.kafka_heartbeat_s,
        kafka_reconnect_backoff_max_s=a.kafka_reconnect_backoff_max_s,
        kafka_fetch_linger_ms=a.kafka_fetch_linger_ms,
        kafka_fetch_batch_bytes=a.kafka_fetch_batch_bytes,
        kafka_fetch_wait_ms=a.kafka_fetch_wait_ms,
        grpc_keepalive_s=a.grpc_keepalive_s,
        grpc_keepalive_timeout_s=a.grpc_keepalive_timeout_s,
        stream_ping_s=a.stream_ping_s,
        stream_liveness_s=a.stream_liveness_s,
        reregister_grace_s=a.reregister_grace_s,
        last_values_max=a.last_values_max,
        shard_networks=networks,
        table_reload_s=a.table_reload_s,
        max_table_age_s=a.max_table_age_s,
        admin_host=a.admin_host,
        admin_port=a.admin_port,
        admin_token=a.admin_token,
        admin_tls_cert=a.admin_tls_cert,
        admin_tls_key=a.admin_tls_key,
        admin_insecure=a.admin_insecure,
        ingest_secret=a.ingest_secret,
        shard_tls_ca=a.shard_tls_ca,
        shard_tls_cert=a.shard_tls_cert,
        shard_tls_key=a.shard_tls_key,
        max_publish_bytes=a.max_publish_bytes,
        route_lookup=a.route_lookup,
        ports_file=a.ports_file,
        log_level=a.log_level,
    )


def _check_admin(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Beyond loopback the admin API (which can drain shards) needs a token, and TLS unless waived."""
    if bool(a.admin_tls_cert) != bool(a.admin_tls_key):
        p.error("--admin-tls-cert and --admin-tls-key go together")
    if is_loopback(a.admin_host):
        return
    if not a.admin_token:
        p.error("--admin-host beyond loopback needs an admin token (SHARDCAST_ADMIN_TOKEN or "
                "--admin-token-file): the admin API can drain shards")
    if not a.admin_tls_cert and not a.admin_insecure:
        p.error("--admin-host beyond loopback needs --admin-tls-cert/--admin-tls-key (the token "
                "would cross the network in cleartext), or --admin-insecure to accept that")


def _check_shard_tls(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """A client certificate needs its key, and both need the CA that verifies the shards."""
    if bool(a.shard_tls_cert) != bool(a.shard_tls_key):
        p.error("--shard-tls-cert and --shard-tls-key go together")
    if a.shard_tls_cert and not a.shard_tls_ca:
        p.error("--shard-tls-cert needs --shard-tls-ca (client certificates only travel over TLS)")
    readable_files(p, shard_tls_ca=a.shard_tls_ca, shard_tls_cert=a.shard_tls_cert,
                   shard_tls_key=a.shard_tls_key, admin_tls_cert=a.admin_tls_cert,
                   admin_tls_key=a.admin_tls_key)
