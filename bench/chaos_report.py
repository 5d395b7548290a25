"""The chaos suite's results: one flat row per run, the table of medians, the markdown and JSON files."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from common.tables import table
from devstack.procs import ROOT

RESULTS_BEGIN, RESULTS_END = "<!-- chaos-results:begin -->", "<!-- chaos-results:end -->"


def row(name, rep, clients, ramp_s, pre, injected, rec, fin, res, producer, wall_s) -> dict:
    """Everything one run measured, flat enough to take medians of."""
    slow = res.get("slow") or {}
    note = injected.note
    if name == "slow_client":
        info = injected.info
        note = (f"slow client closed with {slow.get('close_code') or 'no close frame'}"
                + (f" after {info['dropped_after_s']} s" if info["dropped_by_shard"]
                   else f", not dropped in {info['waited_s']:g} s"))
    elif name == "kafka_restart":
        note += f"; first tick {rec['first_frame_s']} s after accepting"
    elif name == "storm":
        note = f"{clients} clients; all resubscribed in {rec['all_subscribed_s']} s"
    return {
        "fault": name, "rep": rep, "clients": clients, "ramp_s": round(ramp_s, 2),
        "lost_ok": res.get("lost_ok", 0), "lost_failed": res.get("lost_failed", 0),
        "duplicates": res.get("dups_ok", 0) + res.get("dups_failed", 0),
        "dup_snapshots": res.get("dup_snapshots", 0),
        "stale": fin["stale"], **{k: v for k, v in fin.items() if k != "stale"},
        **rec, "resyncs": res.get("resyncs", 0), "closes": res.get("closes", {}),
        "drops": res.get("drops", 0), "reconnects": res.get("reconnects", 0),
        "handshake_failures": res.get("handshake_failures", {}), "frames": res.get("frames", 0),
        "unparsed": res.get("unparsed", 0), "errors": res.get("errors", {}), "pre_fault": pre,
        "slow": res.get("slow"),
        "samples": res.get("samples", []),
        "producer": {"records": producer.sent, "errors": producer.errors},
        "fault_info": injected.info, "note": note, "wall_s": round(wall_s, 1),
    }


def _median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _cell(values: list[int | float]) -> str:
    """Median, and the worst repetition when it differs (one bad run is a bug, not noise)."""
    med, worst = _median(values), max(values)
    text = f"{med:g}"
    return text if worst == med else f"{text} (max {worst:g})"


def render(results: dict[str, list[dict]], cap_s: float) -> str:
    headers = ["fault", "lost: never-failed (must be 0)", "lost: failed component", "duplicates (must be 0)",
               "silently stale (must be 0)", "time to recover", "told: resync / close frame / dropped",
               "notes"]
    rows = []
    for name, all_runs in results.items():
        runs = [r for r in all_runs if "error" not in r]
        if not runs:
            rows.append([name, "-", "-", "-", "-", "-", "-", f"ERROR {all_runs[-1]['error'][:80]}"])
            continue
        rec = [r["recover_s"] for r in runs]
        rec_cell = (f"{_median(rec):.1f} s" if None not in rec else
                    f"> {cap_s:g} s" if all(v is None for v in rec) else
                    f"{_median(rec):.1f} s ({rec.count(None)} not recovered)")
        relapses = sum(r["relapses"] for r in runs)
        if relapses:
            rec_cell += f", fell behind again ×{relapses}"
        told = " / ".join(f"{_median(v):g}" for v in ([r["resyncs"] for r in runs],
                                                     [sum(r["closes"].values()) for r in runs],
                                                     [r["drops"] for r in runs]))
        rows.append([name, _cell([r["lost_ok"] for r in runs]), _cell([r["lost_failed"] for r in runs]),
                     _cell([r["duplicates"] for r in runs]), _cell([r["stale"] for r in runs]), rec_cell,
                     told, runs[-1]["note"] + (f"; {len(all_runs) - len(runs)} runs failed"
                                               if len(runs) < len(all_runs) else "")])
    return table(headers, rows)


def write_outputs(doc: dict, text: str, out_md: Path | None) -> Path:
    """JSON next to the markdown (or under .run/chaos/); the markdown's results block filled."""
    if out_md is None:
        path = ROOT / ".run" / "chaos" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    else:
        path = out_md.with_suffix(".json")
        block = f"{RESULTS_BEGIN}\n```\n{text}\n```\n{RESULTS_END}"
        if out_md.exists() and RESULTS_BEGIN in (md := out_md.read_text()) and RESULTS_END in md:
            head, rest = md.split(RESULTS_BEGIN, 1)
            out_md.write_text(head + block + rest.split(RESULTS_END, 1)[1])
        elif not out_md.exists():
            out_md.parent.mkdir(parents=True, exist_ok=True)
            out_md.write_text(f"# chaos results\n\n{block}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path
