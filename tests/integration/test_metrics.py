"""Prometheus /metrics of every process, scraped after real traffic: the counters moved right."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import STANDARD_NAMES
from demo.producer import METRIC_NAMES as PRODUCER_NAMES
from devstack.procs import BIND_ATTEMPTS, IN_USE, file_size, free_port, log_since, wait_until
from devstack.stack import start_producer
from dispatcher.metrics import NAMES as DISPATCHER_NAMES
from shard.metrics import NAMES as SHARD_NAMES
from tests.integration.admin_client import Admin
from tests.integration.helpers import WsClient, batch_producer, produce, same_partition_token, wait_for

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
    # All 50 records in one partition and one record batch: one Kafka poll, one batch for A.
    other = same_partition_token("MET-1", "OTHER-")
    sent_at = time.time()  # the records' Kafka timestamps are taken after this, on this clock
    produce(batch_producer(stack.kafka.bootstrap), stack.c.topic,
            [("MET-1", json.dumps({"i": i}).encode()) for i in range(40)]
            + [(other, b"{}") for _ in range(10)])
    client.ticks(40)
    delivered_within_s = time.time() - sent_at + 0.001  # + the timestamps' millisecond truncation
    dm = wait_for(lambda: (m := scrape(d.http_port))
                  and value(m, "shardcast_dispatcher_records_consumed", "_total") == 50
                  and m["shardcast_dispatcher_consumer_lag_records"] and m, what="consumed")[0]
    assert set(dm) == set(DISPATCHER_NAMES) | set(STANDARD_NAMES)
    assert value(dm, "shardcast_dispatcher_records_routed", "_total") == 40  # unrouted ones excluded
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
    assert value(dm, "shardcast_dispatcher_route_batch_seconds", "_count") == 1  # one poll held them
    assert sum(dm["shardcast_dispatcher_consumer_lag_records"].values()) == 0
    # NaN until the first sync; how it ages is proven by test_ages_grow_while_their_source_is_silent.
    assert math.isfinite(value(dm, "shardcast_dispatcher_registry_sync_age_seconds"))

    am, bm = scrape(a.ws_port), scrape(b.ws_port)
    assert set(am) == set(bm) == set(SHARD_NAMES) | set(STANDARD_NAMES)
    assert value(am, "shardcast_shard_records_received", "_total") == 40
    assert value(am, "shardcast_shard_frames_queued", "_total") == 40
    assert value(am, "shardcast_shard_frames_written", "_total") == 41  # 40 ticks + the subscribe ack
    assert value(am, "shardcast_shard_delivery_latency_seconds", "_count") == 40
    # Each tick's latency is from its Kafka timestamp to its write, both inside this window.
    assert 0 < value(am, "shardcast_shard_delivery_latency_seconds", "_sum") <= 40 * delivered_within_s
    assert value(am, "shardcast_shard_delivery_latency_seconds", "_bucket", le="+Inf") == 40
    st = a.stats()  # the histogram Prometheus shows is the shard's own, bucket by bucket
    cumulative = [sum(st["delivery_latency_counts"][:i + 1]) for i in range(len(st["latency_bounds_s"]))]
    assert [value(am, "shardcast_shard_delivery_latency_seconds", "_bucket", le=_le(bound))
            for bound in st["latency_bounds_s"]] == cumulative
    assert (value(am, "shardcast_shard_connections"), value(am, "shardcast_shard_subscriptions")) == (1, 1)
    assert value(am, "shardcast_shard_connections_opened", "_total") == 1
    assert value(am, "shardcast_shard_batches_received", "_total") == 1  # the 40 in one batch
    assert value(am, "shardcast_shard_ingest_streams") == 1
    assert value(bm, "shardcast_shard_records_received", "_total") == 0
    assert value(bm, "shardcast_shard_batches_received", "_total") == 0


def _le(bound: float) -> str:
    """A bucket bound as the exposition's `le` label writes it."""
    return str(float(bound))


def test_ages_grow_while_their_source_is_silent(stack, redis_server):
    """A frozen shard's heartbeat age (ListShards) and, with Redis paused, the dispatcher's registry
    sync age (GetStats, /metrics and /healthz alike) pass 1 s, and fall back once the source answers."""
    a = stack.shard("A", "--heartbeat-ttl-s", "30")  # stays listed live through both silences
    d = stack.dispatcher()
    admin = Admin(d.admin_target)
    heartbeat_age = lambda: admin.shards()["A"].heartbeat_age_s  # noqa: E731
    wait_for(lambda: "A" in admin.shards() and heartbeat_age() < 1, what="A heartbeating")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: heartbeat_age() >= 1, what="A's heartbeat ageing while it is frozen")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    wait_for(lambda: heartbeat_age() < 1, what="A's heartbeat fresh again")

    def sync_ages() -> list[float]:
        metric = value(scrape(d.http_port), "shardcast_dispatcher_registry_sync_age_seconds")
        return [admin.stats().registry_sync_age_s, metric, d.get("/healthz")[1]["table_age_s"]]

    wait_for(lambda: max(sync_ages()) < 1, what="the registry re-read (every 0.5 s)")
    # Every client of this Redis waits 3 s, the dispatcher's liveness re-read among them.
    redis.Redis.from_url(redis_server.url).execute_command("CLIENT", "PAUSE", 3000, "ALL")
    wait_for(lambda: min(sync_ages()) >= 1, what="the registry sync ageing while Redis is paused")
    wait_for(lambda: max(sync_ages()) < 1, what="the registry sync fresh again")
    assert d.get("/healthz")[0] == 200  # 3 s is within --max-table-age-s (10 s)


def test_shard_and_dispatcher_export_the_standard_process_and_python_metrics(stack):
    """Both /metrics carry process_* (this process's RSS, CPU, fds) and python_* (info, GC) families."""
    a = stack.shard("A")
    d = stack.dispatcher()
    for port, proc in ((a.ws_port, a.proc), (d.http_port, d.proc)):
        m = scrape(port)
        assert value(m, "process_resident_memory_bytes") > 10 << 20  # a real interpreter's RSS
        assert value(m, "process_cpu_seconds", "_total") > 0
        assert value(m, "process_open_fds") >= 3
        with open(f"/proc/{proc.pid}/stat") as f:  # the child's own start, not pytest's
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        assert value(m, "process_start_time_seconds") == pytest.approx(
            _boot_time() + start_ticks / _clock_ticks(), abs=0.02)
        [(labels, one)] = m["python_info"].items()
        assert one == 1 and dict(labels[1:])["implementation"] == "CPython"
        assert dict(labels[1:])["major"] == "3"
        gens = {dict(k[1:])["generation"] for k in m["python_gc_objects_collected"]}
        assert gens == {"0", "1", "2"}
        assert sum(m["python_gc_collections"].values()) > 0


def _boot_time() -> float:
    with open("/proc/stat") as f:
        return float(next(line for line in f if line.startswith("btime")).split()[1])


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def test_demo_producer_serves_metrics(stack):
    """The demo producer counts the records it sends on its own /metrics."""
    proc, port = _producer_with_metrics(stack)
    try:
        m = scrape(port)
        assert set(m) == set(PRODUCER_NAMES)
        wait_for(lambda: value(scrape(port), "shardcast_producer_records_sent", "_total") >= 50,
                 timeout_s=30, what="records counted")
        assert value(scrape(port), "shardcast_producer_send_errors", "_total") == 0
    finally:
        proc.terminate()
        proc.wait(10)


def _producer_with_metrics(stack) -> tuple[subprocess.Popen, int]:
    """The demo producer serving /metrics, and its port. Its `--metrics-port 0` means "off", so it
    is given a free port: one taken before it binds (it exits "Address already in use") is replaced
    by another, at most BIND_ATTEMPTS times; the port counts once the producer itself listens on it."""
    log = stack.c.logdir / "producer.log"
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port, offset = free_port(), file_size(log)
        proc = start_producer(stack.c, rate=100, tokens=5, metrics_port=port)
        try:
            wait_until(lambda: _listens(proc.pid, port), 30, "producer metrics", proc=proc)  # noqa: B023
            return proc, port
        except RuntimeError:
            if attempt == BIND_ATTEMPTS or IN_USE not in log_since(log, offset):
                raise
    raise AssertionError("unreachable")


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on 127.0.0.1:`port` (not another process)."""
    inodes = {f"socket:[{f[9]}]" for f in (line.split() for line in Path("/proc/net/tcp").read_text()
                                                          .splitlines()[1:])
              if f[3] == "0A" and f[1] == f"0100007F:{port:04X}"}
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd) in inodes for fd in fds.iterdir())
