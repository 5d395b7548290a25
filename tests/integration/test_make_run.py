"""`make run`'s program brings the whole stack up on its own and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

from devstack.procs import ROOT, free_port
from tests.integration.helpers import WsClient

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _run_stack(tmp_path, extra_env: dict[str, str]):
    """Start devstack.run, wait for its banner; return (process, banner text)."""
    env = {**os.environ, "RUN_DIR": str(tmp_path), "RUN_WS_PORT": str(free_port()),
           "RUN_DISPATCHER_PORT": str(free_port()), "RUN_RATE": "300", **extra_env}
    for name in ("SHARDCAST_KAFKA_BOOTSTRAP", "SHARDCAST_REDIS_URL"):
        if name not in extra_env:
            env.pop(name, None)
    out = open(tmp_path / "run.out", "w+")  # noqa: SIM115
    run = subprocess.Popen([sys.executable, "-m", "devstack.run"], cwd=ROOT, env=env,
                           stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    text = ""
    while "shardcast is up" not in text:
        if run.poll() is not None or time.monotonic() > deadline:
            _interrupt(run)
            raise AssertionError(text)
        time.sleep(0.5)
        text = (tmp_path / "run.out").read_text()
    return run, text


def _interrupt(run: subprocess.Popen) -> None:
    """What Ctrl-C does: SIGINT, then wait for the runner to tear everything down."""
    if run.poll() is None:
        run.send_signal(signal.SIGINT)
    run.wait(60)


def _watch_ticks(url: str, banner: str) -> None:
    """Subscribe with the demo token the banner prints (make run's shards run with --auth jwt)."""
    token = re.search(r"demo token \(every token, 24 h\): (\S+)", banner).group(1)
    client = WsClient(f"{url}?token={token}")
    client.subscribe("BTC-USD")
    doc = json.loads(client.ticks(3, timeout_s=30)[0])
    assert doc["token"] == "BTC-USD" and "price" in doc["data"]
    client.close()


def test_run_starts_everything_serves_live_ticks_and_ctrl_c_cleans_up(tmp_path):
    """The stack starts Kafka, Redis, 3 shards, dispatcher, producer; ticks flow; SIGINT stops all."""
    run, text = _run_stack(tmp_path, {})
    try:
        pids = [int(p) for p in re.findall(r"pid=(\d+)", text)]
        assert len(pids) == 7  # redis, kafka, 3 shards, dispatcher, producer
        urls = re.findall(r"shard WebSocket: (ws://\S+)", text)
        assert len(urls) == 3
        _watch_ticks(urls[1], text)
        page = urllib.request.urlopen(urls[1].replace("ws://", "http://").removesuffix("ws")).read()
        assert b"<title>shardcast" in page  # the demo page each shard serves
        redis_url = re.search(r"redis=(redis://\S+)", text).group(1)
        assert redis.Redis.from_url(redis_url).scard("shardcast:shards") == 3
    finally:
        _interrupt(run)
    assert run.returncode == 0
    time.sleep(0.5)
    assert [p for p in pids if _alive(p)] == []
    assert "nothing left running" in (tmp_path / "run.out").read_text()


def test_run_against_existing_kafka_and_redis_leaves_no_registry_entries(tmp_path, kafka, redis_server):
    """Given existing servers, run starts only our processes and Ctrl-C leaves the registry empty."""
    run, text = _run_stack(tmp_path, {"SHARDCAST_KAFKA_BOOTSTRAP": kafka.bootstrap,
                                      "SHARDCAST_REDIS_URL": redis_server.url})
    try:
        pids = [int(p) for p in re.findall(r"pid=(\d+)", text)]
        assert len(pids) == 5  # 3 shards, dispatcher, producer: no servers of its own
        _watch_ticks(re.findall(r"shard WebSocket: (ws://\S+)", text)[0], text)
        r = redis.Redis.from_url(redis_server.url)
        assert r.scard("shardcast:shards") == 3
    finally:
        _interrupt(run)
    assert run.returncode == 0
    assert r.keys("shardcast:*") == []
    assert [p for p in pids if _alive(p)] == []
    assert kafka.proc.poll() is None and r.ping()  # the existing servers keep running
