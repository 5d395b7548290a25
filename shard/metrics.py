"""The shard's Prometheus metrics, read from its own counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from common.metrics import counter, gauge

if TYPE_CHECKING:
    from shard.server import ShardServer

P = "shardcast_shard_"
# Every family this module exports (the compose dashboard test checks its queries against these).
NAMES = tuple(P + n for n in (
    "connections", "connections_opened", "subscriptions", "tokens", "records_received",
    "records_no_subscriber", "batches_received", "frames_queued", "frames_written",
    "frames_conflated", "clients_overflowed", "clients_behind", "outbox_frames", "snapshots_received",
    "duplicates_dropped", "resyncs_delivered", "gaps_closed",
    "auth_failures", "auth_closed", "grpc_unauthenticated", "errors_sent", "upgrades_refused",
    "clients_idle_closed", "clients_write_timeout", "ingest_streams", "draining",
    "delivery_latency_seconds", "loop_lag_seconds", "loop_stall_seconds", "gc_pause_seconds",
    "gc_full_collections", "gc_frozen_objects",
))


def collect(s: ShardServer) -> Iterator[Metric]:
    """Every shard metric, consistent with /stats."""
    st = s.stats()
    c = s.counters
    yield gauge(P + "connections", "WebSocket clients connected", st["connections"])
    yield counter(P + "connections_opened", "WebSocket clients accepted", c["connections_total"])
    yield gauge(P + "subscriptions", "(client, token) subscriptions", st["subscriptions"])
    yield gauge(P + "tokens", "tokens with at least one local subscriber", st["tokens"])
    yield counter(P + "records_received", "records received from dispatchers", st["records_received"])
    yield counter(P + "records_no_subscriber", "records received for tokens nobody here watches",
                  st["records_no_subscriber"])
    yield counter(P + "batches_received", "gRPC delivery batches received", c["batches_received"])
    yield counter(P + "frames_queued", "tick frames queued to client outboxes", st["frames_queued"])
    yield counter(P + "frames_written", "frames written to client sockets", c["frames_written"])
    yield counter(P + "frames_conflated", "ticks replaced by a newer one for a lagging client",
                  st["frames_conflated"])
    yield counter(P + "clients_overflowed", "clients closed as too slow (4008)", st["clients_overflowed"])
    yield gauge(P + "clients_behind", "clients currently conflated", st["clients_behind"])
    yield gauge(P + "outbox_frames", "frames waiting in all client outboxes",
                sum(len(conn.box.frames) + len(conn.box.conflated) for conn in s.conns.values()))
    yield counter(P + "snapshots_received", "last values received on joining a route",
                  st["snapshots_received"])
    yield counter(P + "duplicates_dropped", "records at or behind a position already delivered "
                  "(redelivered upstream), never sent", st["duplicates_dropped"])
    yield counter(P + "resyncs_delivered", "latest values sent as resync after ticks were missed",
                  st["resyncs_delivered"])
    yield counter(P + "gaps_closed", "clients closed (4010): ticks lost with no value to resync",
                  st["gaps_closed"])
    yield counter(P + "auth_failures", "bad client tokens, at the upgrade or in an auth message",
                  st["auth_failures"])
    yield counter(P + "auth_closed", "clients closed at token expiry or the auth deadline",
                  st["auth_closed"])
    yield counter(P + "grpc_unauthenticated", "internal gRPC calls refused for lack of the secret",
                  st["grpc_unauthenticated"])
    yield counter(P + "errors_sent", "error frames sent to clients", c["errors_sent"])
    yield counter(P + "upgrades_refused", "upgrades refused with 503", c["upgrades_refused"])
    yield counter(P + "clients_idle_closed", "clients closed for silence (4001)", c["clients_idle_closed"])
    yield counter(P + "clients_write_timeout", "clients reset after taking nothing for --write-timeout-s",
                  c["clients_write_timeout"])
    yield gauge(P + "ingest_streams", "dispatcher streams connected", c["ingest_streams"])
    yield gauge(P + "draining", "1 while the shard drains", 0 if s.drain is None else 1)
    yield s.latency.family(P + "delivery_latency_seconds",
                           "Kafka record timestamp to frame written to the client socket "
                           "(each write counted at its oldest frame's age: an upper bound)")
    w = s.watch
    yield w.lag.family(P + "loop_lag_seconds", "how late a 10 ms sleep of the event loop wakes")
    yield w.stall.family(P + "loop_stall_seconds",
                         "part of the loop lag the loop spent running code (CPU time): its own stalls")
    yield w.gc_pause.family(P + "gc_pause_seconds", "garbage-collection pauses (thread CPU time)")
    yield counter(P + "gc_full_collections", "full (generation 2) collections", w.full_collections)
    yield gauge(P + "gc_frozen_objects", "objects moved out of GC scans by gc.freeze()",
                st["gc_frozen_objects"])
