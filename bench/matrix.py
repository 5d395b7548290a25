"""`make bench-matrix`: the original plan's shard-count experiment, for both dispatch modes.

Shards S ∈ {1, 2, 3, 4, 5, 7} × mode ∈ {broadcast, targeted}, the same total
connections, token popularity and input rate in every cell, each cell run
`--reps` times (interleaved, so slow drifts of this shared machine spread over
all cells) and reported as medians. Then a skewed cell: a few hot tokens that
every shard holds, where the two modes must converge.

Writes `docs/bench/matrix.csv`, `docs/bench/matrix.md` (the table, the
machine, the command) and PNG plots beside them; every run's full JSON goes to
`.run/bench/matrix/`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.report import fmt
from bench.run import Infra, Scenario, machine, raise_fd_limit, run_scenario
from bench.saturation import run_saturation
from devstack.procs import ROOT

SHARDS = (1, 2, 3, 4, 5, 7)
MODES = ("broadcast", "targeted")
DOCS = ROOT / "docs" / "bench"
COLUMNS = ("delivered_per_s", "missing", "fanout_shards_per_record", "fanout_fraction",
           "dispatcher_cpu_us_per_record", "shards_cpu_us_per_record", "total_cpu_us_per_delivered",
           "shard_records_no_subscriber_per_record", "latency_p50_ms", "latency_p99_ms",
           "shard_cpu_us_per_frame")


def row(r: dict) -> dict:
    """The figures of one run that the matrix compares."""
    d, st, t = r["dispatcher"], r["shards_total"], r["ticks"]
    consumed = d["records_consumed"] or 1
    delivered = max(1, t["delivered"])
    return {
        "delivered_per_s": t["delivered_per_s"],
        "missing": t["missing"],
        "fanout_shards_per_record": d["fanout_shards_per_record"],
        "fanout_fraction": d["fanout_fraction"],
        "dispatcher_cpu_us_per_record": round(d["cpu_s"] / consumed * 1e6, 2),
        "shards_cpu_us_per_record": round(st["cpu_s"] / consumed * 1e6, 2),
        "total_cpu_us_per_delivered": round((d["cpu_s"] + st["cpu_s"]) / delivered * 1e6, 2),
        "shard_records_no_subscriber_per_record": round(st["records_received_no_subscriber"] / consumed, 3),
        "latency_p50_ms": r["latency_ms"]["p50"],
        "latency_p99_ms": r["latency_ms"]["p99"],
        "shard_cpu_us_per_frame": st["cpu_us_per_frame"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.matrix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--connections", type=int, default=12_000)
    p.add_argument("--rate", type=float, default=2_000.0, help="input records/s, the same in every cell")
    p.add_argument("--duration-s", type=float, default=15.0)
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--shards", default=",".join(map(str, SHARDS)))
    p.add_argument("--skew-tokens", type=int, default=20, help="tokens in the skewed cell (0: skip it)")
    p.add_argument("--skew-delivered-rate", type=float, default=24_000.0,
                   help="the skewed cell's input rate is set to deliver this many ticks/s")
    p.add_argument("--saturation-records", type=int, default=60_000,
                   help="backlog per saturation cell (0: skip the saturation cells)")
    p.add_argument("--saturation-connections", type=int, default=1_200)
    p.add_argument("--parts", default="rate,saturation", help="which experiments to run")
    p.add_argument("--out-dir", default=str(DOCS))
    a = p.parse_args(argv)
    raise_fd_limit()
    base = Scenario(connections=a.connections, rate=a.rate, duration_s=a.duration_s, warmup_s=a.warmup_s,
                    fleet_procs=4)
    cells = [(s, m, base) for s in map(int, a.shards.split(",")) for m in MODES]
    if a.skew_tokens:
        skew = replace(base, tokens=a.skew_tokens, rate=0.0, delivered_rate=a.skew_delivered_rate)
        cells += [(7, m, skew) for m in MODES]
    runs_dir = ROOT / ".run" / "bench" / "matrix"
    runs_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="shardcast-matrix-"))
    started = time.time()
    results: dict[tuple, list[dict]] = {}
    saturation: dict[tuple, list[dict]] = {}
    infra = Infra(workdir)
    try:
        if a.saturation_records and "saturation" in a.parts:
            sat = replace(base, connections=a.saturation_connections, fleet_procs=2)
            for rep in range(a.reps):
                for shards in map(int, a.shards.split(",")):
                    for mode in MODES:
                        cell = replace(sat, shards=shards, mode=mode)
                        r = run_saturation(cell, infra, a.saturation_records)
                        saturation.setdefault((shards, mode), []).append(r)
                        print(f"[saturation {rep + 1}/{a.reps}] " + json.dumps(r), flush=True)
        for rep in range(a.reps if "rate" in a.parts else 0):
            for n, (shards, mode, sc) in enumerate(cells):
                label = f"[{rep + 1}/{a.reps} {n + 1}/{len(cells)}] S={shards} {mode} M={sc.tokens}"
                r = run_scenario(replace(sc, shards=shards, mode=mode), infra, label)
                name = f"S{shards}-{mode}-M{sc.tokens}-rep{rep}.json"
                (runs_dir / name).write_text(json.dumps(r, indent=2))
                results.setdefault((shards, mode, sc.tokens), []).append(r)
                print(f"{label}: " + json.dumps(row(r)), flush=True)
    finally:
        infra.stop()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if results:
        medians = {key: {c: _median([row(r)[c] for r in rs]) for c in COLUMNS} for key, rs in results.items()}
        _write_csv(out / "matrix.csv", medians, a.reps)
        md = _markdown(medians, a, time.time() - started, machine())
        (out / "matrix.md").write_text(md)
        _plots(out, medians, base.tokens)
        print(md)
    if saturation:
        sat_md = "<!-- generated by `make bench-matrix` (bench/matrix.py); do not edit -->\n" + \
            _saturation(out, saturation, a)
        (out / "saturation.md").write_text(sat_md)
        print(sat_md)
    return 0


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _write_csv(path: Path, medians: dict, reps: int) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shards", "mode", "tokens", "reps", *COLUMNS])
        for (shards, mode, tokens), m in sorted(medians.items()):
            w.writerow([shards, mode, tokens, reps, *(m[c] for c in COLUMNS)])


def _markdown(medians: dict, a: argparse.Namespace, wall_s: float, mach: dict) -> str:
    head = ["S", "mode", "tokens", "delivered/s", "missing", "fan-out (shards/rec)", "fraction",
            "dispatcher CPU µs/rec", "shards CPU µs/rec", "total CPU µs/delivered", "no-sub rec/shard-rec",
            "p50 ms", "p99 ms"]
    rows = [[s, mode, tok, m["delivered_per_s"], m["missing"], m["fanout_shards_per_record"],
             m["fanout_fraction"], m["dispatcher_cpu_us_per_record"], m["shards_cpu_us_per_record"],
             m["total_cpu_us_per_delivered"], m["shard_records_no_subscriber_per_record"],
             m["latency_p50_ms"], m["latency_p99_ms"]] for (s, mode, tok), m in sorted(medians.items())]
    md_rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md_rows += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join([
        "<!-- generated by `make bench-matrix` (bench/matrix.py); do not edit -->",
        f"Medians of {a.reps} runs per cell; {a.connections:,} connections, {a.rate:,.0f} input records/s "
        f"for {a.duration_s:g} s after {a.warmup_s:g} s of warm-up (the skewed cell, {a.skew_tokens} tokens: "
        f"the rate that delivers {a.skew_delivered_rate:,.0f} ticks/s); wall time {wall_s / 60:.1f} min.",
        f"Machine: {mach['cpus']} CPUs ({mach['cpu_model']}), {mach['mem_gib']} GiB, "
        f"Python {mach['python']}; "
        "load generator and stack on the same machine.",
        f"Command: `make bench-matrix` (= `python -m bench.matrix --reps {a.reps} --connections "
        f"{a.connections} --rate {a.rate:g} --duration-s {a.duration_s:g}`).",
        "", *md_rows, ""])


SAT_COLUMNS = ("records_per_s", "frames_per_s", "missing", "fanout_shards_per_record",
               "dispatcher_cpu_us_per_record", "shards_cpu_us_per_record",
               "shard_records_no_subscriber_per_record")


def _saturation(out: Path, runs: dict, a: argparse.Namespace) -> str:
    """CSV, table and plot of the saturation cells (medians)."""
    med = {k: {c: _median([r[c] for r in rs]) for c in SAT_COLUMNS} for k, rs in runs.items()}
    with (out / "saturation.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shards", "mode", "reps", *SAT_COLUMNS])
        for (s, m), v in sorted(med.items()):
            w.writerow([s, m, a.reps, *(v[c] for c in SAT_COLUMNS)])
    head = ["S", "mode", "records/s", "frames/s", "missing", "fan-out (shards/rec)", "dispatcher CPU µs/rec",
            "shards CPU µs/rec", "no-sub rec/shard-rec"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(c) for c in (s, m, *(v[c] for c in SAT_COLUMNS))) + " |"
              for (s, m), v in sorted(med.items())]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for ax, col, title in ((axes[0], "records_per_s", "Backlog drained end to end (records/s)"),
                           (axes[1], "shards_cpu_us_per_record", "All shards' CPU per record (µs)")):
        for mode, style in (("broadcast", "o-"), ("targeted", "s-")):
            pts = sorted((s, v[col]) for (s, m), v in med.items() if m == mode)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=mode)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("shards")
        ax.set_xticks(list(SHARDS))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "saturation.png")
    plt.close(fig)
    return "\n".join([
        f"### Saturation cells: a backlog of {a.saturation_records:,} records through "
        f"{a.saturation_connections:,} subscribed clients, flat out (medians of {a.reps})", "", *lines, ""])


def _plots(out: Path, medians: dict, tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(col: str, mode: str) -> tuple[list, list]:
        pts = sorted((s, m[col]) for (s, md, tok), m in medians.items() if md == mode and tok == tokens)
        return [p[0] for p in pts], [p[1] for p in pts]

    for col, title, fname in (
        ("delivered_per_s", "Delivered ticks/s (same input rate in every cell)", "delivered.png"),
        ("dispatcher_cpu_us_per_record", "Dispatcher CPU per record (µs)", "dispatcher_cpu.png"),
        ("fanout_shards_per_record", "Fan-out: shard deliveries per record", "fanout.png"),
        ("shards_cpu_us_per_record", "All shards' CPU per record (µs)", "shards_cpu.png"),
        ("total_cpu_us_per_delivered", "Dispatcher + shards CPU per delivered tick (µs)", "total_cpu.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
        for mode, style in (("broadcast", "o-"), ("targeted", "s-")):
            xs, ys = series(col, mode)
            ax.plot(xs, ys, style, label=mode)
        ax.set_xlabel("shards")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(list(SHARDS))
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(out / fname)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
