"""The peers benchmark's arithmetic and outputs, pure: rate ladder, step verdicts, medians, the
targets of issue 10 as ratios, the CSV, the markdown page and the plot."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Sequence

CPU_RATIO_AT_FIRST = 0.8  # shardcast's CPU per frame ≤ 0.8 × Centrifugo's at the first rate
RATE_RATIO = 1.25  # shardcast's highest clean rate ≥ 1.25 × Centrifugo's
SATURATED_BUSY = 0.9  # the load generator's core counts as saturated from this busy fraction


def rate_ladder(start: float = 10_000, double_until: float = 80_000, step: float = 40_000,
                maximum: float = 240_000) -> list[float]:
    """Delivered frames/s to try, in order: doubling from `start` up to `double_until`, then `+step`."""
    rates, r = [], start
    while r <= maximum:
        rates.append(r)
        r = r * 2 if r < double_until else r + step
        if rates[-1] < double_until < r:
            r = double_until
    return rates


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Busy share of one CPU between two (busy, total) jiffy samples of /proc/stat."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return round(busy / total, 3) if total > 0 else None


def step_clean(step: dict, latency_limit_ms: float = 1000.0) -> bool:
    """Kept up: every expected tick delivered once, in order, and p99 within the limit."""
    p99 = step.get("p99_ms")
    return (step["missing"] == 0 and step["dups"] == 0 and step["reorders"] == 0 and step["gaps"] == 0
            and p99 is not None and p99 <= latency_limit_ms)


def highest_clean(steps: Sequence[dict]) -> float:
    """The highest target rate of a ladder's clean steps (the ladder stops at its first unclean one)."""
    return max((s["rate_target"] for s in steps if s["clean"]), default=0.0)


def _median(values: Iterable) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def summarize(runs: Sequence[dict], rates: Sequence[float]) -> dict:
    """Medians over repetitions: per system (idle memory, highest clean rate) and per (system, rate)."""
    systems: dict[str, dict] = {}
    for name in dict.fromkeys(r["system"] for r in runs):
        mine = [r for r in runs if r["system"] == name and not r.get("error")]
        tops = [r["highest_clean"] for r in mine]
        ladder_done = [r for r in mine if r["steps"] and r["steps"][-1]["clean"]]
        per_rate = {}
        for rate in rates:
            steps = [s for r in mine for s in r["steps"] if s["rate_target"] == rate]
            if not steps:
                continue
            per_rate[rate] = {
                "reps": len(steps), "clean_reps": sum(s["clean"] for s in steps),
                "delivered_per_s": _median(s["delivered_per_s"] for s in steps),
                "cpu_us_per_frame": _median(s["cpu_us_per_frame"] for s in steps),
                "cpu_us_per_frame_runs": [s["cpu_us_per_frame"] for s in steps],
                "cpu_us_by_proc": {k: _median(s["cpu_us_by_proc"].get(k) for s in steps)
                                   for k in steps[0]["cpu_us_by_proc"]},
                "p50_ms": _median(s["p50_ms"] for s in steps), "p99_ms": _median(s["p99_ms"] for s in steps),
                "missing_max": max(s["missing"] for s in steps), "dups_max": max(s["dups"] for s in steps),
                "reorders_max": max(s["reorders"] for s in steps), "gaps_max": max(s["gaps"] for s in steps),
                "loadgen_core_busy": _median(s["loadgen_core_busy"] for s in steps),
                "fleet_cores": _median(s["fleet_cores"] for s in steps),
                "loadgen_saturated_reps": sum(bool(s["loadgen_saturated"]) for s in steps),
                "server_core_other": _median(s["server_core_other"] for s in steps),
                "producer_rate_ratio": _median(s["producer_rate_ratio"] for s in steps),
            }
        systems[name] = {
            "reps": len(mine), "errors": [r["error"] for r in runs if r["system"] == name and r.get("error")],
            "rss_per_conn_kib": _median(r["rss_per_conn_kib"] for r in mine),
            "rss_per_conn_kib_runs": [r["rss_per_conn_kib"] for r in mine],
            "idle_cores": _median(r["idle_cores"] for r in mine),
            "connections_failed_max": max((r["connections"]["failed"] for r in mine), default=0),
            "highest_clean": _median(tops), "highest_clean_runs": tops,
            # Clean up to the ladder's top in a majority of runs: the real limit is higher.
            "capped": bool(mine) and len(ladder_done) * 2 > len(mine),
            "rates": per_rate,
        }
    return systems


def _verdict(ratio: float | None, limit: float, at_most: bool) -> str:
    if ratio is None:
        return "n/a"
    return "MET" if (ratio <= limit if at_most else ratio >= limit) else "MISSED"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def targets(summary: dict, rates: Sequence[float]) -> list[dict]:
    """Issue 10's targets, each as shardcast's figure over the peer's from the same run."""
    sc, cf, ws = summary.get("shardcast"), summary.get("centrifugo"), summary.get("websockets")
    out = []

    def row(name: str, ratio: float | None, limit: float, at_most: bool, detail: str) -> None:
        out.append({"target": name, "ratio": ratio, "limit": limit,
                    "verdict": _verdict(ratio, limit, at_most), "detail": detail})

    def cpu(s: dict | None, rate: float) -> float | None:
        return s["rates"].get(rate, {}).get("cpu_us_per_frame") if s else None

    first = rates[0] if rates else None
    row(f"CPU per frame at {_k(first)}/s ≤ {CPU_RATIO_AT_FIRST} × Centrifugo's",
        _ratio(cpu(sc, first), cpu(cf, first)), CPU_RATIO_AT_FIRST, True,
        f"{_num(cpu(sc, first))} vs {_num(cpu(cf, first))} µs")
    higher = [(r, _ratio(cpu(sc, r), cpu(cf, r))) for r in rates[1:]]
    higher = [(r, x) for r, x in higher if x is not None]
    worst = max(higher, key=lambda rx: rx[1], default=(None, None))
    row("CPU per frame ≤ Centrifugo's at every higher rate (worst ratio)", worst[1], 1.0, True,
        ", ".join(f"{_k(r)}: {x}" for r, x in higher) or "no higher rate with both")
    top_sc = sc["highest_clean"] if sc else None
    top_cf = cf["highest_clean"] if cf else None
    ratio = _ratio(top_sc, top_cf)
    capped = " (Centrifugo clean up to the ladder's top: its limit is higher)" if cf and cf["capped"] else ""
    if sc and sc["capped"] and ratio is not None and ratio < RATE_RATIO:
        ratio, capped = None, " (shardcast clean up to the ladder's top: a longer ladder decides)"
    row(f"highest clean rate ≥ {RATE_RATIO} × Centrifugo's", ratio, RATE_RATIO, False,
        f"{_k(top_sc)} vs {_k(top_cf)} frames/s{capped}")
    both = [r for r in rates if sc and cf and _sustained(sc, r) and _sustained(cf, r)]
    p99 = [(r, _ratio(sc["rates"][r]["p99_ms"], cf["rates"][r]["p99_ms"])) for r in both]
    p99 = [(r, x) for r, x in p99 if x is not None]
    worst = max(p99, key=lambda rx: rx[1], default=(None, None))
    row("p99 latency ≤ Centrifugo's at every rate both sustain (worst ratio)", worst[1], 1.0, True,
        ", ".join(f"{_k(r)}: {x}" for r, x in p99) or "no rate both sustain")
    row("RSS per connection ≤ websockets'",
        _ratio(sc["rss_per_conn_kib"] if sc else None, ws["rss_per_conn_kib"] if ws else None), 1.0, True,
        f"{_num(sc and sc['rss_per_conn_kib'])} vs {_num(ws and ws['rss_per_conn_kib'])} KiB")
    return out


def _sustained(s: dict, rate: float) -> bool:
    r = s["rates"].get(rate)
    return bool(r) and r["clean_reps"] * 2 > r["reps"]


def _k(rate: float | None) -> str:
    if rate is None:
        return "n/a"
    return f"{rate / 1000:g}k" if rate >= 1000 else f"{rate:g}"


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.1f}" if abs(x) >= 10 else f"{x:.2f}"


CSV_FIELDS = ["system", "rate_target", "reps", "clean_reps", "delivered_per_s", "cpu_us_per_frame",
              "cpu_us_per_frame_runs", "cpu_us_by_proc", "p50_ms", "p99_ms", "missing_max", "dups_max",
              "reorders_max", "gaps_max", "loadgen_core_busy", "fleet_cores", "loadgen_saturated_reps",
              "server_core_other", "producer_rate_ratio", "rss_per_conn_kib", "idle_cores", "highest_clean"]


def csv_text(summary: dict) -> str:
    """One row per (system, rate), plus one `idle` row per system with its memory and idle CPU."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for name, s in summary.items():
        w.writerow({"system": name, "rate_target": "idle", "reps": s["reps"],
                    "rss_per_conn_kib": s["rss_per_conn_kib"], "idle_cores": s["idle_cores"],
                    "highest_clean": s["highest_clean"]})
        for rate, r in s["rates"].items():
            w.writerow({"system": name, "rate_target": rate, **{
                k: (" ".join(map(str, v)) if k == "cpu_us_per_frame_runs" else
                    " ".join(f"{p}={x}" for p, x in v.items()) if k == "cpu_us_by_proc" else v)
                for k, v in r.items()}})
    return buf.getvalue()


def markdown(summary: dict, tgts: list[dict], rates: Sequence[float], meta: dict, labels: dict,
             notes: Sequence[str]) -> str:
    """docs/bench/peers.md: what was run, the side-by-side table, every rate, the targets, caveats."""
    first = rates[0] if rates else None
    lines = [f"# Peers side by side ({meta['profile']})", "", *meta["header"], "",
             f"| system | RSS per connection (KiB) | CPU µs per delivered frame at {_k(first)}/s (runs) "
             f"| p50 / p99 ms at {_k(first)}/s | highest clean rate (runs) |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        r0 = s["rates"].get(first, {})
        runs = ", ".join(_num(x) for x in r0.get("cpu_us_per_frame_runs", []))
        procs = "; ".join(f"{p} {_num(x)}" for p, x in r0.get("cpu_us_by_proc", {}).items()
                          if len(r0.get("cpu_us_by_proc", {})) > 1)
        top_runs = ", ".join(_k(x) for x in s["highest_clean_runs"])
        top = f"{'≥ ' if s['capped'] else ''}{_k(s['highest_clean'])} ({top_runs})"
        lines.append(f"| {labels.get(name, name)} | {_num(s['rss_per_conn_kib'])} | "
                     f"{_num(r0.get('cpu_us_per_frame'))} ({runs}){': ' + procs if procs else ''} | "
                     f"{_num(r0.get('p50_ms'))} / {_num(r0.get('p99_ms'))} | {top} |")
    lines += ["", "## Every rate (medians over the repetitions that reached it)", "",
              "| system | target frames/s | delivered/s | clean | CPU µs/frame | p50 ms | p99 ms "
              "| missing / dups / reorders (max) | load-gen core busy (clients' own) "
              "| other load on the server core |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        for rate, r in s["rates"].items():
            sat = " **saturated**" if r["loadgen_saturated_reps"] else ""
            lines.append(
                f"| {name} | {_k(rate)} | {_num(r['delivered_per_s'])} | {r['clean_reps']}/{r['reps']} | "
                f"{_num(r['cpu_us_per_frame'])} | {_num(r['p50_ms'])} | {_num(r['p99_ms'])} | "
                f"{r['missing_max']} / {r['dups_max']} / {r['reorders_max']} | "
                f"{_pct(r['loadgen_core_busy'])} ({_pct(r['fleet_cores'])}){sat} | "
                f"{_pct(r['server_core_other'])} |")
    lines += ["", "## Targets of issue 10 (shardcast ÷ peer, same run)", "",
              "| target | ratio | limit | verdict | figures |", "|---|---|---|---|---|"]
    for t in tgts:
        lines.append(f"| {t['target']} | {_num(t['ratio'])} | {t['limit']} | {t['verdict']} | "
                     f"{t['detail']} |")
    idle = ", ".join(f"{n} {_num(s['idle_cores'])}" for n, s in summary.items())
    lines += ["", f"Idle CPU with every client connected and no ticks (cores): {idle}.", ""]
    if any(r["loadgen_saturated_reps"] for s in summary.values() for r in s["rates"].values()):
        lines += [f"**The load generator's core was saturated** (busy ≥ {SATURATED_BUSY:.0%}) at the rates "
                  "marked above: there the clients, not the server, may limit delivery and latency.", ""]
    errors = [f"* {n}: {e}" for n, s in summary.items() for e in s["errors"]]
    if errors:
        lines += ["Runs that failed:", "", *errors, ""]
    lines += ["## Read with care", "", *[f"* {n}" for n in notes], ""]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def plot(summary: dict, path, labels: dict) -> bool:
    """CPU µs per delivered frame against delivered frames/s, one line per system (False: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in summary.items():
        pts = [(r["delivered_per_s"], r["cpu_us_per_frame"], r["clean_reps"] * 2 > r["reps"])
               for r in s["rates"].values() if r["delivered_per_s"] and r["cpu_us_per_frame"]]
        if not pts:
            continue
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", label=labels.get(name, name))
        for x, y, ok in pts:
            ax.plot(x, y, "o", color=line.get_color(), fillstyle="full" if ok else "none", markersize=7)
    ax.set_xlabel("delivered frames/s (median)")
    ax.set_ylabel("server CPU µs per delivered frame (median)")
    ax.set_title("One core each: CPU per frame vs rate (hollow: fell behind)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
