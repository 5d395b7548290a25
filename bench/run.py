"""`make bench`: one scenario — S shards, a mode, N clients, ticks at a fixed rate — measured.

Starts Kafka and Redis (devstack), the shards and the dispatcher, ramps up the
client fleet (progress bar), produces ticks for a fixed time, waits for every
expected tick, and reports connections held, delivered ticks/s, expected vs
delivered, latency percentiles, CPU per 1,000 records and per frame, RSS per
connection, event-loop lag, with each target of issue 4 beside its value.
Prints a table; writes every figure to a JSON file.

Environment: BENCH_QUICK=1 (a small profile, < 3 min), BENCH_SHARDS, BENCH_MODE,
BENCH_CONNECTIONS, BENCH_DURATION_S, BENCH_OUT; flags override (`--help`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from bench import procstat
from bench.report import render, render_targets, summarize, targets
from bench.stack import Fleet, Sut, wait
from bench.workload import (
    fanout_fraction,
    mean_subscribers,
    merge_hist,
    percentile_ms,
    subscription_table,
)
from common.metrics import bucket_quantile
from devstack.kafka_server import KafkaServer
from devstack.procs import ROOT
from devstack.redis_server import RedisServer


@dataclass(frozen=True)
class Scenario:
    shards: int = 3
    mode: str = "targeted"
    connections: int = 12_000
    fleet_procs: int = 4
    tokens: int = 5_000
    subs: int = 5  # tokens per connection
    zipf: float = 1.0  # subscription popularity exponent
    delivered_rate: float = 25_000.0  # frames/s the input rate is chosen to produce
    rate: float = 0.0  # records/s; 0: derived from delivered_rate
    duration_s: float = 30.0
    warmup_s: float = 5.0  # ticks before measuring (cold JVM, caches); latency counts after it
    dist: str = "uniform"  # which token each tick is for
    partitions: int = 6
    seed: int = 7


QUICK = Scenario(connections=600, fleet_procs=2, tokens=500, delivered_rate=3_000, duration_s=8,
                 warmup_s=2)


class Infra:
    """Kafka and Redis for a series of scenarios (started once, reused)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir / "redis").start()
        try:
            self.kafka = KafkaServer(workdir / "kafka").start()
        except BaseException:
            self.redis.stop()
            raise

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()


def run_scenario(sc: Scenario, infra: Infra, label: str = "", progress: bool = True) -> dict:
    """Run one scenario end to end and return its figures."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=infra.workdir))
    table = subscription_table(sc.connections, sc.shards, sc.seed, sc.tokens, sc.zipf, sc.subs)
    rate = sc.rate or sc.delivered_rate / mean_subscribers(table, sc.tokens)
    sut = Sut.start(infra.kafka, infra.redis.url, work / "logs", sc.shards, sc.mode, sc.partitions)
    fleet = None
    try:
        time.sleep(1.0)
        baseline = sut.snapshot()
        fleet = Fleet(sut.urls, sc.connections, sc.fleet_procs, sc.tokens, sc.subs, sc.zipf, sc.seed, work)
        ramp_s = _ramp(fleet, sc.connections, label, progress)
        wait(lambda: sut.dispatcher.stats()["routing_tokens"] >= len(table), 30, "routes in the dispatcher")
        fleet.tell("freeze")
        time.sleep(2.0)  # let the shards' gc.freeze check run after the ramp
        marks: dict = {}

        def measure() -> None:  # warm-up over: everything counts from here
            marks["before"] = sut.snapshot()
            marks["fleet_cpu0"] = sum(procstat.cpu_s(p) for p in fleet.pids())
            fleet.tell("mark")

        produced = _produce(sut, fleet, sc, rate, work, label, progress, measure)
        # Upper bound while waiting (as if every client connected); exact figure from the fleet below.
        _settle(fleet, sum(seq * sum(table[t].values()) for t, seq in produced["final_seq"].items()
                           if t in table))
        after = sut.snapshot()
        fleet_cpu = sum(procstat.cpu_s(p) for p in fleet.pids()) - marks["fleet_cpu0"]
        before = marks["before"]
        results = fleet.finish()
    finally:
        if fleet is not None:
            fleet.kill()
        sut.stop()
    return _figures(sc, rate, table, ramp_s, baseline, before, after, produced, results, fleet_cpu)


def _ramp(fleet: Fleet, n: int, label: str, progress: bool) -> float:
    start = time.monotonic()
    with tqdm(total=n, desc=f"{label} connect", unit="conn", disable=not progress, leave=False) as bar:
        while True:
            done = fleet.total("connected") + fleet.total("failed")
            bar.n = done
            bar.set_postfix(failed=fleet.total("failed"), subscribed=fleet.total("subscribed"))
            bar.refresh()
            if done >= n and fleet.total("subscribed") >= fleet.total("connected"):  # failures counted
                return time.monotonic() - start
            if time.monotonic() - start > 600:
                raise TimeoutError(f"ramp-up stalled at {done}/{n}")
            time.sleep(0.25)


def _produce(sut: Sut, fleet: Fleet, sc: Scenario, rate: float, work: Path, label: str,
             progress: bool, on_measure) -> dict:
    """Run the producer (warm-up, then the measured part); `on_measure()` runs between them."""
    out = work / "producer.json"
    cmd = [sys.executable, "-m", "bench.producer", "--bootstrap", sut.c.kafka_bootstrap, "--topic",
           sut.c.topic, "--tokens", str(sc.tokens), "--rate", f"{rate:.3f}", "--duration-s",
           str(sc.duration_s), "--warmup-s", str(sc.warmup_s), "--dist", sc.dist, "--zipf", str(sc.zipf),
           "--seed", str(sc.seed), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            stderr=open(work / "producer.log", "ab"))  # noqa: SIM115
    measuring = threading.Event()

    def watch() -> None:
        for line in proc.stdout:
            if line.strip() == "measure":
                on_measure()
                measuring.set()

    threading.Thread(target=watch, daemon=True).start()
    if sc.warmup_s <= 0:
        measuring.wait(5)
    total = round(sc.warmup_s + sc.duration_s)
    start, ticks0 = time.monotonic(), fleet.total("ticks")
    with tqdm(total=total, desc=f"{label} warm-up+load", unit="s", disable=not progress, leave=False) as bar:
        while proc.poll() is None:
            time.sleep(0.5)
            el = time.monotonic() - start
            bar.n = min(round(el), bar.total)
            bar.set_postfix(delivered_per_s=f"{(fleet.total('ticks') - ticks0) / el:,.0f}",
                            phase="load" if measuring.is_set() else "warm-up")
            bar.refresh()
    if proc.returncode != 0:
        raise RuntimeError(f"producer failed, see {work / 'producer.log'}")
    measuring.wait(5)
    return json.loads(out.read_text())


def _settle(fleet: Fleet, expected: int, quiet_s: float = 5.0, cap_s: float = 120.0) -> None:
    """Wait until every expected tick arrived, or nothing more arrives for `quiet_s`."""
    start = last_change = time.monotonic()
    seen = fleet.total("ticks")
    while fleet.total("ticks") < expected and time.monotonic() - start < cap_s:
        time.sleep(0.25)
        now = fleet.total("ticks")
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return


def _figures(sc, rate, table, ramp_s, baseline, before, after, produced, results, fleet_cpu) -> dict:
    shard_ids = [k for k in after if k != "dispatcher"]
    hist = merge_hist(r["latency_hist_us"] for r in results)
    # Expected for the clients that subscribed (a client that failed to connect is counted
    # under connections, not here): the last sequence number of each of their tokens.
    subs = merge_hist(r["subs"] for r in results)
    expected = sum(seq * subs.get(t, 0) for t, seq in produced["final_seq"].items())
    delivered = sum(r["ticks"] for r in results)
    delivered_measured = delivered - sum(r["ticks_at_mark"] for r in results)
    held = sum(r["connected"] - r["closed_by_server"] for r in results)
    per_shard = {}
    for sid in shard_ids:
        b, a = before[sid], after[sid]
        frames = a["stats"]["frames_written"] - b["stats"]["frames_written"]
        cpu = a["cpu_s"] - b["cpu_s"]
        conns = b["stats"]["connections"]
        lag_max, lag_over = _window(a, b, "loop_lag_counts")
        stall_max, stall_over = _window(a, b, "loop_stall_counts")
        per_shard[sid] = {
            "connections": conns,
            "records_received": a["stats"]["records_received"] - b["stats"]["records_received"],
            "records_no_subscriber": (a["stats"]["records_no_subscriber"]
                                      - b["stats"]["records_no_subscriber"]),
            "frames_written": frames,
            "cpu_s": round(cpu, 3),
            "cpu_us_per_frame": round(cpu / frames * 1e6, 2) if frames else None,
            "rss_kib": a["rss_kib"], "peak_rss_kib": a["peak_rss_kib"],
            "rss_per_conn_kib": round((before[sid]["rss_kib"] - baseline[sid]["rss_kib"]) / conns, 2)
            if conns else None,
            "loop_stall_max_ms_run": stall_max, "loop_stall_probes_over_20ms_run": stall_over,
            "loop_lag_max_ms_run": lag_max, "loop_lag_probes_over_20ms_run": lag_over,
            "loop_lag_max_ms_since_start": round(a["stats"]["loop_lag_max_s"] * 1000, 2),
            "gc_pause_max_ms_since_start": round(a["stats"]["gc_pause_max_s"] * 1000, 2),
            "gc_full_collections_run": a["stats"]["gc_full_collections"] - b["stats"]["gc_full_collections"],
            "gc_frozen_objects": a["stats"]["gc_frozen_objects"],
        }
    d_before, d_after = before["dispatcher"], after["dispatcher"]
    d_cpu = d_after["cpu_s"] - d_before["cpu_s"]
    d_stats = d_after["stats"]
    deliveries = d_stats["deliveries"] - d_before["stats"]["deliveries"]
    consumed = d_stats["records_consumed"] - d_before["stats"]["records_consumed"]
    frames_total = sum(s["frames_written"] for s in per_shard.values())
    shard_cpu = sum(s["cpu_s"] for s in per_shard.values())
    return {
        "scenario": asdict(sc),
        "input_rate_records_per_s": round(rate, 2),
        "expected_fanout_fraction": round(fanout_fraction(table, sc.tokens, sc.shards), 4)
        if sc.dist == "uniform" else None,
        "connections": {"attempted": sc.connections, "connected": sum(r["connected"] for r in results),
                        "held": held, "failed": sum(r["failed"] for r in results),
                        "closed_by_server": sum(r["closed_by_server"] for r in results),
                        "errors": dict(sum((Counter(r["errors"]) for r in results), Counter())),
                        "ramp_s": round(ramp_s, 2)},
        "producer": {k: produced[k] for k in ("records", "errors", "elapsed_s", "rate_achieved")},
        "ticks": {"expected": expected, "delivered": delivered, "missing": expected - delivered,
                  "gaps": sum(r["gaps"] for r in results), "reorders": sum(r["reorders"] for r in results),
                  "delivered_per_s": round(delivered_measured / produced["elapsed_s"], 1)},
        "latency_ms": {"p50": percentile_ms(hist, 0.5), "p99": percentile_ms(hist, 0.99),
                       "p99.9": percentile_ms(hist, 0.999), "max": percentile_ms(hist, 1.0),
                       "samples": sum(hist.values()),
                       "breakdown": _breakdown(before, after, shard_ids)},
        "dispatcher": {"records_consumed": consumed, "deliveries": deliveries,
                       "fanout_shards_per_record": round(deliveries / consumed, 4) if consumed else None,
                       "fanout_fraction": round(deliveries / consumed / sc.shards, 4) if consumed else None,
                       "cpu_s": round(d_cpu, 3),
                       "cpu_s_per_1000_records": round(d_cpu / consumed * 1000, 5) if consumed else None,
                       "rss_kib": d_after["rss_kib"], "peak_rss_kib": d_after["peak_rss_kib"]},
        "shards": per_shard,
        "shards_total": {
            "frames_written": frames_total, "cpu_s": round(shard_cpu, 3),
            "cpu_us_per_frame": round(shard_cpu / frames_total * 1e6, 2) if frames_total else None,
            "cpu_s_per_1000_records": round(shard_cpu / consumed * 1000, 5) if consumed else None,
            "rss_per_conn_kib_median": statistics.median(
                [s["rss_per_conn_kib"] for s in per_shard.values() if s["rss_per_conn_kib"] is not None]
                or [0]),
            "records_received_no_subscriber": sum(s["records_no_subscriber"] for s in per_shard.values()),
        },
        "fleet_cpu_s": round(fleet_cpu, 3),
    }


def _breakdown(before: dict, after: dict, shard_ids: list[str]) -> dict:
    """Latency stages in the run window from the processes' own histograms (bucket upper bounds, ms)."""
    def delta(name: str, key: str) -> list[int]:
        return [x - y for x, y in zip(after[name]["stats"][key], before[name]["stats"][key], strict=True)]

    def q(counts: list[int], bounds: list[float], p: float) -> float | None:
        value = bucket_quantile(bounds, counts, p)
        return None if value is None else value * 1000

    kafka = delta("dispatcher", "consume_latency_counts")
    kbounds = after["dispatcher"]["stats"]["latency_bounds_s"]
    write = [sum(col) for col in zip(*(delta(s, "delivery_latency_counts") for s in shard_ids), strict=True)]
    wbounds = after[shard_ids[0]]["stats"]["latency_bounds_s"]
    return {"kafka_to_dispatcher_ms": {"p50": q(kafka, kbounds, 0.5), "p99": q(kafka, kbounds, 0.99)},
            "kafka_to_socket_write_ms": {"p50": q(write, wbounds, 0.5), "p99": q(write, wbounds, 0.99)},
            "note": "bucket upper bounds of the processes' histograms"}


def _window(a: dict, b: dict, key: str) -> tuple[float, int]:
    """From two snapshots of a shard's probe histogram: (upper bound of the worst probe in ms,
    probes over 20 ms) during the run window."""
    bounds = a["stats"]["lag_bounds_s"]
    delta = [x - y for x, y in zip(a["stats"][key], b["stats"][key], strict=True)]
    hit = [i for i, n in enumerate(delta) if n]
    worst = (bounds[hit[-1]] * 1000 if hit[-1] < len(bounds) else float("inf")) if hit else 0.0
    over = sum(n for i, n in enumerate(delta) if i >= len(bounds) or bounds[i] > 0.02)
    return worst, over


def parse(argv: list[str] | None = None) -> tuple[Scenario, Path, bool, int]:
    env = os.environ
    base = QUICK if env.get("BENCH_QUICK") == "1" else Scenario()
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in Scenario.__dataclass_fields__.values():
        default = getattr(base, f.name)
        env_value = env.get(f"BENCH_{f.name.upper()}")
        if env_value:
            default = type(default)(env_value)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default)
    p.add_argument("--out", default=env.get("BENCH_OUT", ""))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--reps", type=int, default=int(env.get("BENCH_REPS", "1")),
                   help="run the scenario this many times; targets report medians")
    a = p.parse_args(argv)
    sc = replace(base, **{k: getattr(a, k) for k in Scenario.__dataclass_fields__})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else ROOT / ".run" / "bench" / f"bench-{sc.mode}-S{sc.shards}-{stamp}.json"
    return sc, out, not a.no_progress, a.reps


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    sc, out, progress, reps = parse(argv)
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="shardcast-bench-"))
    started = time.time()
    infra = Infra(workdir)
    runs = []
    try:
        for rep in range(reps):
            r = run_scenario(sc, infra, f"[{rep + 1}/{reps}] S={sc.shards} {sc.mode}", progress)
            r["targets"] = targets(r)
            runs.append(r)
            if reps > 1:
                print(render(r) + "\n", flush=True)
    finally:
        infra.stop()
    # The last run carries every figure; the summary gives each target's median over the runs.
    result = {**runs[-1], "wall_s": round(time.time() - started, 1), "machine": machine(),
              "targets": summarize([r["targets"] for r in runs]), "runs": runs if reps > 1 else []}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(render(result) if reps == 1 else render_targets(result["targets"], reps))
    print(f"\nJSON: {out}")
    return 0


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_kib / 2**20, 1),
            "python": sys.version.split()[0], "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}


if __name__ == "__main__":
    sys.exit(main())
