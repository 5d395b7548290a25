"""The dispatcher's Prometheus metrics, read from its own counters at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from common.metrics import FastHistogram, counter, gauge, labelled

if TYPE_CHECKING:
    from dispatcher.app import Dispatcher

P = "shardcast_dispatcher_"
# Seconds to route one poll and hand it to the shard queues.
ROUTE_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# Every family this module exports (the compose dashboard test checks its queries against these).
NAMES = tuple(P + n for n in (
    "records_consumed", "records_invalid", "records_routed", "records_unrouted", "deliveries",
    "fallback_batches", "snapshots_sent", "records_dropped_gone", "offset_commits",
    "offset_commit_failures", "shard_records_offered", "shard_records_sent",
    "shard_records_dropped", "shard_records_resent", "shard_resyncs_sent", "shard_gaps_sent",
    "shard_stream_failures", "shard_queue_depth", "shard_stream_ready", "consumer_lag_records",
    "routing_table_tokens", "registry_sync_age_seconds", "registry_healthy", "live_shards", "mode",
    "route_batch_seconds", "consume_latency_seconds", "uptime_seconds",
))


def collect(d: Dispatcher, route_hist: FastHistogram) -> Iterator[Metric]:
    """Every dispatcher metric, consistent with /stats and the admin API's GetStats."""
    rc, loop, sync = d.router.counters, d.loop, d.sync
    yield counter(P + "records_consumed", "Kafka records consumed", loop.records_consumed)
    yield counter(P + "records_invalid", "records skipped for lack of a usable key", loop.records_invalid)
    # routed + unrouted = every record the router saw; routed ones went to at least one shard.
    yield counter(P + "records_routed", "records queued for at least one shard", rc.records - rc.unrouted)
    yield counter(P + "records_unrouted", "records no live shard wanted", rc.unrouted)
    yield counter(P + "deliveries", "(record, shard) pairs queued: fan-out", rc.deliveries)
    yield counter(P + "fallback_batches", "polls broadcast because the routing table was unhealthy",
                  rc.fallback_batches)
    yield counter(P + "snapshots_sent", "last values sent to shards joining a route", d.snapshots_sent)
    yield counter(P + "records_dropped_gone", "records for shards no longer streamed",
                  d.streams.dropped_gone)
    yield counter(P + "offset_commits", "Kafka offset commits", loop.commits)
    yield counter(P + "offset_commit_failures", "failed Kafka offset commits", loop.commit_failures)
    yield from _per_shard(d)
    yield labelled(GaugeMetricFamily, P + "consumer_lag_records", "high watermark minus position",
                   "partition", {str(p): max(0, hi - pos) for p, (pos, hi) in loop.lag.items()})
    yield gauge(P + "routing_table_tokens", "tokens in the local routing table", len(sync.table))
    yield gauge(P + "registry_sync_age_seconds", "time since the registry last answered",
                time.time() - sync.last_sync_s if sync.last_sync_s else float("nan"))
    yield gauge(P + "registry_healthy", "1 when the routing table is in sync with Redis",
                1 if sync.healthy else 0)
    yield gauge(P + "live_shards", "shards heartbeating in the registry", len(sync.live))
    yield labelled(GaugeMetricFamily, P + "mode", "1 for the current dispatch mode", "mode",
                   {m: 1 if m == d.router.mode else 0 for m in ("targeted", "broadcast")})
    yield route_hist.family(P + "route_batch_seconds", "routing and hand-off time per Kafka poll")
    yield loop.consume_latency.family(P + "consume_latency_seconds",
                                      "Kafka record timestamp to polled by this dispatcher")
    yield gauge(P + "uptime_seconds", "seconds since start", time.time() - d.started)


def _per_shard(d: Dispatcher) -> Iterator[Metric]:
    stats = d.streams.stats()
    per = lambda key: {sid: float(s[key]) for sid, s in stats.items()}  # noqa: E731
    yield labelled(CounterMetricFamily, P + "shard_records_offered", "records queued for each shard",
                   "shard", per("records_offered"))
    yield labelled(CounterMetricFamily, P + "shard_records_sent",
                   "records sent on each shard's stream (resends included)", "shard", per("records_sent"))
    yield labelled(CounterMetricFamily, P + "shard_records_dropped",
                   "records dropped by each shard's full queue", "shard", per("records_dropped"))
    yield labelled(CounterMetricFamily, P + "shard_records_resent",
                   "unacked records resent on a new stream after a reset", "shard", per("records_resent"))
    yield labelled(CounterMetricFamily, P + "shard_resyncs_sent",
                   "latest values sent because records of their token were dropped", "shard",
                   per("resyncs_sent"))
    yield labelled(CounterMetricFamily, P + "shard_gaps_sent",
                   "gap markers sent: records dropped with no value to resync", "shard", per("gaps_sent"))
    yield labelled(CounterMetricFamily, P + "shard_stream_failures", "streams to each shard that broke",
                   "shard", per("stream_failures"))
    yield labelled(GaugeMetricFamily, P + "shard_queue_depth", "records waiting for each shard",
                   "shard", per("queue_depth"))
    yield labelled(GaugeMetricFamily, P + "shard_stream_ready", "1 while the shard's stream is up",
                   "shard", {sid: 1.0 if s["state"] == "ready" else 0.0 for sid, s in stats.items()})
