"""`make bench-routing`: what a record's routing costs the dispatcher, three ways, side by side.

One Kafka backlog (uniform over M tokens), three shards with a small subscribed
client fleet, then the real dispatcher consumes the whole backlog once per
variant and repetition (a fresh consumer group each time, interleaved):

* `table` — the local routing table kept in sync from Redis (the design);
* `redis-per-batch` — one pipelined Redis round trip per Kafka poll;
* `redis-per-record` — one Redis round trip per record (the original plan).

Reports records/s sustained (first to last record consumed), Redis commands
per record (INFO commandstats delta, minus the background rate of heartbeats
and registry refreshes measured in an idle window), and dispatcher CPU per
record; medians of the repetitions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench import procstat
from bench.report import table
from bench.run import Infra
from bench.stack import Fleet, Sut, wait
from bench.workload import subscription_table
from devstack.procs import ROOT, stop

VARIANTS = ("table", "redis-per-batch", "redis-per-record")


def commands(r: redis.Redis) -> int:
    return int(r.info("stats")["total_commands_processed"])


def consume_once(sut: Sut, variant: str, rep: int, records: int, r: redis.Redis, idle_rate: float) -> dict:
    """Start a dispatcher on a fresh group, time it through the whole backlog, stop it."""
    c0 = commands(r)
    d = sut.start_dispatcher("targeted", ["--route-lookup", variant, "--max-poll-records", "5000"],
                             group=f"rc-{variant}-{rep}-{time.time_ns()}",
                             dispatcher_id=f"rc-{variant}-{rep}")
    stats = d.stats
    t_first = cpu_first = None
    c_first = c0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        consumed = stats()["records_consumed"]
        now = time.monotonic()
        if t_first is None and consumed > 0:
            t_first, cpu_first, c_first, n_first = now, procstat.cpu_s(d.proc.pid), commands(r), consumed
        if consumed >= records:
            break
        time.sleep(0.05)
    t_last, cpu_last, c_last = time.monotonic(), procstat.cpu_s(d.proc.pid), commands(r)
    time.sleep(1.0)  # the last poll may still be in the router
    st = stats()
    stop(d.proc)
    n = records - n_first
    elapsed = t_last - t_first
    redis_cmds = max(0.0, (c_last - c_first) - idle_rate * elapsed)
    return {"variant": variant, "rep": rep, "records": n, "elapsed_s": round(elapsed, 3),
            "records_per_s": round(n / elapsed, 1), "redis_commands_per_record": round(redis_cmds / n, 4),
            "dispatcher_cpu_us_per_record": round((cpu_last - cpu_first) / n * 1e6, 2),
            "deliveries": st["deliveries"], "records_unrouted": st["records_unrouted"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--tokens", type=int, default=5_000)
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / ".run" / "bench" / "routing-cost.json"))
    a = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="shardcast-routing-"))
    infra = Infra(workdir)
    runs: list[dict] = []
    try:
        sut = Sut.start(infra.kafka, infra.redis.url, workdir / "logs", 3, "targeted", 6,
                        with_dispatcher=False)
        fleet = Fleet(sut.urls, a.connections, 1, a.tokens, 5, 1.0, 7, workdir)
        try:
            wait(lambda: fleet.total("subscribed") >= a.connections, 60, "fleet subscribed")
            routed = len(subscription_table(a.connections, 3, 7, a.tokens, 1.0, 5))
            produced = workdir / "producer.json"
            subprocess.run([sys.executable, "-m", "bench.producer", "--bootstrap", sut.c.kafka_bootstrap,
                            "--topic", sut.c.topic, "--tokens", str(a.tokens), "--backlog", str(a.records),
                            "--out", str(produced)], cwd=ROOT, check=True)
            r = redis.Redis.from_url(infra.redis.url)
            c0, t0 = commands(r), time.monotonic()
            time.sleep(3)
            idle_rate = (commands(r) - c0 - 1) / (time.monotonic() - t0)
            for rep in range(a.reps):
                for variant in VARIANTS:
                    run = consume_once(sut, variant, rep, a.records, r, idle_rate)
                    runs.append(run)
                    print(json.dumps(run), flush=True)
        finally:
            fleet.kill()
            sut.stop()
    finally:
        infra.stop()
    summary = {}
    for v in VARIANTS:
        mine = [x for x in runs if x["variant"] == v]
        summary[v] = {k: statistics.median(x[k] for x in mine)
                      for k in ("records_per_s", "redis_commands_per_record", "dispatcher_cpu_us_per_record")}
    doc = {"records": a.records, "tokens": a.tokens, "tokens_routed": routed, "connections": a.connections,
           "reps": a.reps,
           "idle_redis_commands_per_s": round(idle_rate, 1), "median": summary, "runs": runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(table(["route lookup", "records/s (median)", "Redis cmds/record", "dispatcher CPU us/record"],
                [[v, s["records_per_s"], s["redis_commands_per_record"], s["dispatcher_cpu_us_per_record"]]
                 for v, s in summary.items()]))
    print(f"\nJSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
