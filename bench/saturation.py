"""Saturation cells: how fast a backlog goes through the whole system, per shard count and mode.

At a modest fixed input rate (the matrix's main cells) the per-poll and
per-batch costs dominate and both modes cost about the same; what broadcast
adds — every shard receiving, decoding and dropping records it has no
subscriber for — only shows when records are many. Here a backlog of
`records` ticks is produced first, with a client fleet subscribed; then the
dispatcher starts and everything runs flat out until every expected tick has
reached its clients. Reports records/s and frames/s end to end and CPU per
record of the dispatcher and of all shards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import Infra, Scenario
from bench.stack import Fleet, Sut, wait
from bench.workload import merge_hist, subscription_table
from devstack.procs import ROOT


def _until_delivered(fleet: Fleet, upper: int, quiet_s: float = 3.0, cap_s: float = 300.0) -> float:
    """Wall time of the last tick: when all `upper` arrived, or the last one before `quiet_s` of nothing."""
    start = last_change_mono = time.monotonic()
    last_wall, seen = time.time(), fleet.total("ticks")
    while seen < upper and time.monotonic() - start < cap_s:
        time.sleep(0.02)
        now = fleet.total("ticks")
        if now != seen:
            seen, last_wall, last_change_mono = now, time.time(), time.monotonic()
        elif time.monotonic() - last_change_mono > quiet_s:
            break
    return last_wall


def run_saturation(sc: Scenario, infra: Infra, records: int) -> dict:
    """One cell: backlog, then the dispatcher drains it through S shards to the fleet."""
    work = Path(tempfile.mkdtemp(prefix="sat-", dir=infra.workdir))
    table = subscription_table(sc.connections, sc.shards, sc.seed, sc.tokens, sc.zipf, sc.subs)
    sut = Sut.start(infra.kafka, infra.redis.url, work / "logs", sc.shards, sc.mode, sc.partitions,
                    with_dispatcher=False)
    fleet = None
    try:
        fleet = Fleet(sut.urls, sc.connections, sc.fleet_procs, sc.tokens, sc.subs, sc.zipf, sc.seed, work)
        wait(lambda: fleet.total("subscribed") + fleet.total("failed") >= sc.connections, 120,
             "fleet subscribed")
        out = work / "producer.json"
        subprocess.run([sys.executable, "-m", "bench.producer", "--bootstrap", sut.c.kafka_bootstrap,
                        "--topic", sut.c.topic, "--tokens", str(sc.tokens), "--backlog", str(records),
                        "--seed", str(sc.seed), "--out", str(out)], cwd=ROOT, check=True)
        produced = json.loads(out.read_text())
        upper = sum(seq * sum(table[t].values()) for t, seq in produced["final_seq"].items() if t in table)
        before = sut.snapshot()
        sut.start_dispatcher(sc.mode, ["--shard-queue-records", str(max(100_000, records))])
        done_wall = _until_delivered(fleet, upper)
        after = sut.snapshot()
        # The clocks start at the dispatcher's first consumed record, as it reports (not at its start-up).
        first_wall, first_cpu = after["dispatcher"]["stats"]["first_record_at"]
        elapsed = done_wall - first_wall
        d_cpu = after["dispatcher"]["stats"]["process_cpu_s"] - first_cpu
        results = fleet.finish()
    finally:
        if fleet is not None:
            fleet.kill()
        sut.stop()
    shard_ids = [k for k in after if k != "dispatcher"]
    consumed = after["dispatcher"]["stats"]["records_consumed"]
    shard_cpu = sum(after[s]["cpu_s"] - before[s]["cpu_s"] for s in shard_ids)
    no_sub = sum(after[s]["stats"]["records_no_subscriber"] - before[s]["stats"]["records_no_subscriber"]
                 for s in shard_ids)
    d = after["dispatcher"]
    delivered = sum(r["ticks"] for r in results)
    subs = merge_hist(r["subs"] for r in results)  # the clients that did subscribe
    expected = sum(seq * subs.get(t, 0) for t, seq in produced["final_seq"].items())
    return {
        "shards": sc.shards, "mode": sc.mode, "records": records, "elapsed_s": round(elapsed, 3),
        "records_per_s": round(consumed / elapsed, 1), "frames_per_s": round(delivered / elapsed, 1),
        "expected": expected, "delivered": delivered, "missing": expected - delivered,
        "gaps": sum(r["gaps"] for r in results),
        "fanout_shards_per_record": round(d["stats"]["deliveries"] / records, 4),
        "dispatcher_cpu_us_per_record": round(d_cpu / consumed * 1e6, 2),
        "shards_cpu_us_per_record": round(shard_cpu / consumed * 1e6, 2),
        "shard_records_no_subscriber_per_record": round(no_sub / consumed, 3),
    }
