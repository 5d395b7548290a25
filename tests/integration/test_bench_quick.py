"""The BENCH_QUICK=1 benchmark profile end to end: it finishes, its JSON is complete, nothing is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from devstack.procs import ROOT

pytestmark = pytest.mark.integration


def test_quick_benchmark_profile_runs_and_reports_everything(tmp_path):
    """`make bench` with BENCH_QUICK=1: under 3 minutes, every figure present, expected == delivered."""
    out = tmp_path / "bench.json"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--no-progress", "--out", str(out)],
                          cwd=ROOT, env={**os.environ, "BENCH_QUICK": "1"}, capture_output=True, text=True,
                          timeout=300)
    wall_s = time.monotonic() - started
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    assert wall_s < 180, f"the quick profile took {wall_s:.0f} s"
    r = json.loads(out.read_text())
    for key in ("scenario", "connections", "producer", "ticks", "latency_ms", "dispatcher", "shards",
                "shards_total", "targets", "machine", "input_rate_records_per_s"):
        assert key in r, key
    assert r["connections"]["held"] == r["connections"]["attempted"] == 600
    assert r["connections"]["failed"] == 0
    t = r["ticks"]
    assert t["expected"] > 0 and t["delivered"] == t["expected"] and t["gaps"] == t["reorders"] == 0
    assert r["producer"]["errors"] == 0 and r["dispatcher"]["records_consumed"] > 0
    assert len(r["shards"]) == 3 and all(s["frames_written"] > 0 for s in r["shards"].values())
    assert all(v is not None for v in r["latency_ms"].values())
    assert r["shards_total"]["records_received_no_subscriber"] == 0  # targeted: no wasted records
    assert {"target", "limit", "measured", "met"} <= set(r["targets"][0])
    assert "JSON:" in proc.stdout and "connections held" in proc.stdout
