"""Dispatcher process wiring: config, registry sync, router, streams, consumer, admin, status."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import asdict

import redis

from common.cli import setup_logging
from common.metrics import FastHistogram, exposition, make_registry
from common.ports_file import write_ports_file
from dispatcher import metrics
from dispatcher.admin_core import AdminCore
from dispatcher.admin_grpc import AdminServer, GrpcShardControl
from dispatcher.config import DispatcherConfig, parse_args
from dispatcher.consumer import ConsumerLoop
from dispatcher.grpc_out import ShardAuth, StreamPolicy
from dispatcher.publisher import KafkaPublisher
from dispatcher.redis_lookup import RedisPerBatch, RedisPerRecord
from dispatcher.registry_sync import RegistrySync
from dispatcher.routing import Mode, RouteLookup, Router
from dispatcher.shard_addrs import AddressPolicy
from dispatcher.status_http import serve
from dispatcher.streams import ShardStreams

log = logging.getLogger(__name__)


class Dispatcher:
    """Owns every component; `run()` blocks in the Kafka loop until `stop()`."""

    def __init__(self, cfg: DispatcherConfig) -> None:
        self.cfg = cfg
        self.started = time.time()
        self.sync = RegistrySync(cfg.redis_url, cfg.namespace, cfg.registry_refresh_s,
                                 cfg.janitor_grace_s, cfg.backoff_cap_s, self._send_snapshot,
                                 self._on_cluster_mode, cfg.reregister_grace_s,
                                 AddressPolicy(cfg.shard_networks), cfg.table_reload_s)
        self.snapshots_sent = 0
        self.router = Router(_lookup(cfg.route_lookup, self.sync), cfg.mode)
        shard_auth = ShardAuth(cfg.ingest_secret, cfg.shard_tls_ca, cfg.shard_tls_cert, cfg.shard_tls_key)
        policy = StreamPolicy(cfg.max_batch_records, cfg.backoff_cap_s, cfg.grpc_keepalive_s,
                              cfg.grpc_keepalive_timeout_s, cfg.stream_ping_s, shard_auth)
        self.streams = ShardStreams(cfg.shard_queue_records, policy, cfg.stream_liveness_s,
                                    latest=lambda token: self.loop.last.get(token),
                                    tokens_of=self.sync.table.tokens_of)
        self.loop = ConsumerLoop(cfg, self.sync, self.router, self.streams)
        self.route_hist = FastHistogram(metrics.ROUTE_BUCKETS_S)
        self.loop.route_timer = self.route_hist.observe
        self.metrics = make_registry(lambda: metrics.collect(self, self.route_hist))
        self.publisher = KafkaPublisher(cfg.kafka_bootstrap, cfg.topic,
                                        f"shardcast-admin-{cfg.dispatcher_id}", cfg.max_publish_bytes)
        core = AdminCore(self, GrpcShardControl(shard_auth), self.publisher, self._set_cluster_mode)
        self.admin = AdminServer(cfg, core, lambda: self._health()[0] == 200)
        self.http = None

    def run(self) -> None:
        self.sync.start()
        self.http = serve(self.cfg.http_host, self.cfg.http_port, {
            "/healthz": lambda q: self._health(),
            "/metrics": lambda q: (200, exposition(self.metrics)),
            "/stats": lambda q: (200, self.stats()),
            "/route": self._route,
            "/shards": lambda q: (200, {sid: asdict(i) for sid, i in self.sync.live.items()}),
        })
        self.admin.start()
        http_port = self.http.server_address[1]  # the one bound: --http-port 0 picks any free port
        write_ports_file(self.cfg.ports_file, {"http_port": http_port, "admin_port": self.admin.port})
        log.info("dispatcher up mode=%s http=%s:%d", self.cfg.mode, self.cfg.http_host, http_port)
        try:
            self.loop.run()
        finally:
            self.admin.stop()
            self.publisher.close()
            self.streams.stop_all()
            self.sync.stop()
            self.http.shutdown()
            log.info("dispatcher stopped")

    def stop(self) -> None:
        self.loop.stop()

    def _send_snapshot(self, token: str, shard_id: str) -> None:
        """A shard just gained its first subscriber of `token`: send it the last value now."""
        rec = self.loop.last.get(token)
        if rec is not None and self.streams.offer_snapshot(shard_id, rec):
            self.snapshots_sent += 1

    def _on_cluster_mode(self, value: str) -> None:
        """The registry says an operator set the mode (now or before this process started)."""
        try:
            mode = Mode(value)
        except ValueError:
            log.warning("ignoring unknown dispatch mode %r from the registry", value)
            return
        if mode is not self.router.mode:
            log.info("dispatch mode %s -> %s (set by an operator)", self.router.mode, mode)
            self.router.mode = mode

    def _set_cluster_mode(self, mode: Mode) -> bool:
        """Store the mode for every dispatcher; False if Redis is unreachable (local only)."""
        try:
            self.sync.registry.set_mode(mode.value)
            return True
        except redis.RedisError as exc:
            log.warning("mode set on this dispatcher only, registry unreachable: %s", exc)
            return False

    def _health(self) -> tuple[int, object]:
        age_s = time.time() - self.sync.last_sync_s
        fresh = age_s <= self.cfg.max_table_age_s  # the sync thread answers and Redis with it
        ok = self.loop.assigned and self.sync.connected and fresh
        doc = {"ok": ok, "kafka_assigned": self.loop.assigned, "registry_synced": self.sync.connected,
               "routes_trusted": self.sync.healthy, "table_age_s": round(age_s, 3)}
        return (200 if ok else 503), doc

    def _route(self, query: dict[str, list[str]]) -> tuple[int, object]:
        token = (query.get("token") or [""])[0]
        if not token:
            return 400, {"error": "token query parameter required"}
        shards = self.router.targets(token, self.streams.routable)
        return 200, {"token": token, "mode": str(self.router.mode), "shards": sorted(shards)}

    def stats(self) -> dict[str, object]:
        rc = self.router.counters
        return {
            "dispatcher_id": self.cfg.dispatcher_id,
            "mode": str(self.router.mode),
            "uptime_s": round(time.time() - self.started, 3),
            "records_consumed": self.loop.records_consumed,
            "records_invalid": self.loop.records_invalid,
            "records_routed": rc.records - rc.unrouted,  # queued for at least one shard
            "deliveries": rc.deliveries,
            "records_unrouted": rc.unrouted,
            "fallback_batches": rc.fallback_batches,
            "snapshots_sent": self.snapshots_sent,
            "commits": self.loop.commits,
            "polls": self.loop.polls,
            "fetch_mode": self.loop.pacer.current.mode,  # busy: fetches gather records (fetch_pacing.py)
            "fetch_mode_switches": self.loop.pacer.switches,
            "commit_failures": self.loop.commit_failures,
            "routing_tokens": len(self.sync.table),
            "registry_healthy": self.sync.connected,
            "routes_trusted": self.sync.healthy,
            "registry_resyncs": self.sync.resyncs,
            "registry_reloads": self.sync.reloads,
            "registry_changes_rejected": self.sync.changes_rejected,
            "shards_refused_address": self.sync.policy.refused,
            "last_values": len(self.loop.last),
            "last_values_evicted": self.loop.last.evicted,
            "registry_changes_applied": self.sync.changes_applied,
            "registry_sync_age_s": round(time.time() - self.sync.last_sync_s, 3),
            "dropped_for_gone_shards": self.streams.dropped_gone,
            "live_shards": sorted(self.sync.live),
            "routable_shards": sorted(self.streams.routable),
            "shards_resynced_on_return": self.streams.resynced_returns,
            "first_record_at": self.loop.first_record_at,
            "assigned_partitions": sorted(self.loop.lag),
            "process_cpu_s": time.process_time(),
            "consume_latency_counts": list(self.loop.consume_latency.counts),
            "latency_bounds_s": list(self.loop.consume_latency.bounds),
            "shards": self.streams.stats(),
        }


def _lookup(kind: str, sync: RegistrySync) -> RouteLookup:
    """The local table, or a Redis-reading baseline for the routing-cost benchmark."""
    if kind == "redis-per-record":
        return RedisPerRecord(sync)
    if kind == "redis-per-batch":
        return RedisPerBatch(sync)
    return sync


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    setup_logging("dispatcher", cfg.dispatcher_id, cfg.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    dispatcher = Dispatcher(cfg)
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    signal.signal(signal.SIGINT, lambda *_: dispatcher.stop())
    dispatcher.run()
