"""`make chaos --quick` end to end: stream resets, a Redis restart and a paused shard on the real stack.

Runs `python -m bench.chaos --quick` (its own Kafka broker and redis-server,
3 shards, 2 dispatchers, a few hundred reconnecting clients) and holds the
delivery guarantees to their numbers: nothing lost on clients of components
that never failed, nothing delivered twice, nobody left silently stale.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devstack.procs import ROOT

pytestmark = pytest.mark.integration
FAULTS = ["stream_reset", "redis_restart", "shard_pause"]


def test_quick_chaos_profile_loses_nothing_duplicates_nothing_leaves_nobody_stale(tmp_path):
    """Under stream resets, a Redis restart and a paused shard: lost 0 (also on the paused shard's
    own clients: they get resyncs), duplicates 0, stale 0."""
    out = tmp_path / "reliability.md"
    proc = subprocess.run([sys.executable, "-m", "bench.chaos", "--quick", "--reps", "1",
                           "--faults", ",".join(FAULTS), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert list(doc["faults"]) == FAULTS
    for name, runs in doc["faults"].items():
        r = runs[0]
        assert "error" not in r, (name, r.get("error"))
        assert r["frames"] > 0 and r["producer"]["errors"] == 0, (name, r)  # ticks really flowed
        assert r["lost_ok"] == 0, (name, r)
        assert r["lost_failed"] == 0, (name, r)  # the paused shard's clients are told (resync)
        assert r["duplicates"] == 0, (name, r)
        assert r["stale"] == 0, (name, r)
        assert r["recover_s"] is not None, (name, r)
        assert not r["closes"], (name, r["closes"])  # told by resyncs, nobody had to be closed
    assert min(doc["faults"]["stream_reset"][0]["fault_info"]["sockets_killed"]) >= 6  # 2 dispatchers × 3
    assert "silently stale" in proc.stdout and "silently stale" in out.read_text()
