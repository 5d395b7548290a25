"""Prometheus /metrics of every process, scraped after real traffic: the counters moved right."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo.producer import METRIC_NAMES as PRODUCER_NAMES
from devstack.procs import free_port
from devstack.stack import start_producer
from dispatcher.metrics import NAMES as DISPATCHER_NAMES
from shard.metrics import NAMES as SHARD_NAMES
from tests.integration.helpers import WsClient, produce, producer, wait_for

pytestmark = pytest.mark.integration


def scrape(port: int, path: str = "/metrics") -> dict[str, dict[tuple, float]]:
    """family name → {sorted label items (+ sample suffix) → value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        samples = out.setdefault(fam.name, {})
        for s in fam.samples:
            samples[(s.name.removeprefix(fam.name), *sorted(s.labels.items()))] = s.value
    return out


def value(m: dict, name: str, suffix: str = "", **labels: str) -> float:
    return m[name][(suffix, *sorted(labels.items()))]


def test_dispatcher_and_shard_metrics_count_real_traffic_exactly(stack):
    """After 40 routed and 10 unrouted records every counter shows exactly that traffic."""
    a, b = stack.shard("A"), stack.shard("B")
    d = stack.dispatcher()
    client = WsClient(a.ws_url)
    client.subscribe("MET-1")
    produce(producer(stack.kafka.bootstrap), stack.c.topic,
            [("MET-1", json.dumps({"i": i}).encode()) for i in range(40)]
            + [("OTHER", b"{}") for _ in range(10)])
    client.ticks(40)
    dm = wait_for(lambda: (m := scrape(d.http_port))
                  and value(m, "shardcast_dispatcher_records_consumed", "_total") == 50
                  and m["shardcast_dispatcher_consumer_lag_records"] and m, what="consumed")[0]
    assert set(dm) == set(DISPATCHER_NAMES)
    assert value(dm, "shardcast_dispatcher_records_routed", "_total") == 50
    assert value(dm, "shardcast_dispatcher_deliveries", "_total") == 40
    assert value(dm, "shardcast_dispatcher_records_unrouted", "_total") == 10
    assert value(dm, "shardcast_dispatcher_shard_records_offered", "_total", shard="A") == 40
    assert value(dm, "shardcast_dispatcher_shard_records_offered", "_total", shard="B") == 0
    assert value(dm, "shardcast_dispatcher_shard_records_sent", "_total", shard="A") == 40
    assert value(dm, "shardcast_dispatcher_shard_queue_depth", shard="A") == 0
    assert value(dm, "shardcast_dispatcher_shard_stream_ready", shard="B") == 1
    assert value(dm, "shardcast_dispatcher_live_shards") == 2
    assert value(dm, "shardcast_dispatcher_registry_healthy") == 1
    assert value(dm, "shardcast_dispatcher_routing_table_tokens") == 1
    assert value(dm, "shardcast_dispatcher_mode", mode="targeted") == 1
    assert value(dm, "shardcast_dispatcher_mode", mode="broadcast") == 0
    assert value(dm, "shardcast_dispatcher_route_batch_seconds", "_count") >= 1
    assert sum(dm["shardcast_dispatcher_consumer_lag_records"].values()) == 0
    assert 0 <= value(dm, "shardcast_dispatcher_registry_sync_age_seconds") < 5

    am, bm = scrape(a.ws_port), scrape(b.ws_port)
    assert set(am) == set(bm) == set(SHARD_NAMES)
    assert value(am, "shardcast_shard_records_received", "_total") == 40
    assert value(am, "shardcast_shard_frames_queued", "_total") == 40
    assert value(am, "shardcast_shard_frames_written", "_total") == 41  # 40 ticks + the subscribe ack
    assert value(am, "shardcast_shard_delivery_latency_seconds", "_count") == 40
    assert 0 < value(am, "shardcast_shard_delivery_latency_seconds", "_sum") < 40 * 5
    assert value(am, "shardcast_shard_delivery_latency_seconds", "_bucket", le="+Inf") == 40
    assert (value(am, "shardcast_shard_connections"), value(am, "shardcast_shard_subscriptions")) == (1, 1)
    assert value(am, "shardcast_shard_connections_opened", "_total") == 1
    assert value(am, "shardcast_shard_batches_received", "_total") >= 1
    assert value(am, "shardcast_shard_ingest_streams") == 1
    assert value(bm, "shardcast_shard_records_received", "_total") == 0
    assert value(bm, "shardcast_shard_batches_received", "_total") == 0


def test_demo_producer_serves_metrics(stack):
    """The demo producer counts the records it sends on its own /metrics."""
    port = free_port()
    proc = start_producer(stack.c, rate=100, tokens=5, metrics_port=port)
    try:
        m = wait_for(lambda: _try_scrape(port), timeout_s=30, what="producer metrics")[0]
        assert set(m) == set(PRODUCER_NAMES)
        wait_for(lambda: value(scrape(port), "shardcast_producer_records_sent", "_total") >= 50,
                 timeout_s=30, what="records counted")
        assert value(scrape(port), "shardcast_producer_send_errors", "_total") == 0
    finally:
        proc.terminate()
        proc.wait(10)


def _try_scrape(port: int):
    try:
        return scrape(port)
    except OSError:
        return None
