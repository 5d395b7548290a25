"""The quick profile of `make bench-peers`: shardcast and the bare gevent floor, one small run each,
on the session's real Kafka and Redis; correctness asserted, the numbers only printed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.peers import PeersConfig, run_all, write_outputs

pytestmark = pytest.mark.integration

CLIENTS = 300


def test_quick_peers_profile_delivers_every_tick_once_in_order(kafka, redis_server, workdir, tmp_path):
    """Each system: every client subscribed, then at one low rate expected == delivered, 0 duplicates,
    0 gaps, 0 reorderings (per token); the page, CSV and JSON come out with a row per system."""
    cfg = PeersConfig(systems=("shardcast", "gevent"), connections=CLIENTS, fleet_procs=1, tokens=200,
                      rates=(2_000.0,), reps=1, warmup_s=1, duration_s=4, idle_s=1, pin=False,
                      profile="quick test", out_dir=str(tmp_path))
    infra = SimpleNamespace(kafka=kafka, redis=redis_server)  # the session's servers, not pinned
    runs = run_all(cfg, infra, workdir)
    out = write_outputs(cfg, runs, {"profile": cfg.profile, "header": ["quick test"]})
    print(json.dumps([{k: r[k] for k in ("system", "rss_per_conn_kib", "idle_cores", "error")} | {
        "step": {k: r["steps"][0][k] for k in ("delivered_per_s", "cpu_us_per_frame", "cpu_us_by_proc",
                                               "p50_ms", "p99_ms", "expected", "delivered")}
        if r["steps"] else None} for r in runs], indent=1))
    assert [r["system"] for r in runs] == ["shardcast", "gevent"]
    for r in runs:
        assert r["error"] is None, r["error"]
        assert r["connections"] == {"attempted": CLIENTS, "connected": CLIENTS, "subscribed": CLIENTS,
                                    "failed": 0}
        (step,) = r["steps"]
        assert step["expected"] > 0 and step["delivered"] == step["expected"] and step["missing"] == 0
        assert step["dups"] == step["gaps"] == step["reorders"] == 0
        assert step["closed_by_server"] == 0 and step["errors"] == {}
        assert step["producer_errors"] == 0
    assert set(out["summary"]) == {"shardcast", "gevent"}
    assert set(out["summary"]["shardcast"]["rates"][2_000.0]["cpu_us_by_proc"]) == {"shard", "dispatcher"}
    md = (tmp_path / "peers.md").read_text()
    assert "| shardcast (1 shard + its dispatcher) |" in md and "| bare gevent-websocket loop |" in md
    assert (tmp_path / "peers.csv").read_text().count("\n") == 1 + 2 * 2  # header, idle + one rate each
    assert json.loads((tmp_path / "peers.json").read_text())["runs"] == runs
