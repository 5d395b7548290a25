"""`make run`'s program brings the whole stack up on its own and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

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


def test_run_starts_everything_serves_live_ticks_and_ctrl_c_cleans_up(tmp_path):
    """The stack starts Kafka, Redis, 3 shards, dispatcher, producer; ticks flow; SIGINT stops all."""
    ws_port = free_port()
    env = {**os.environ, "RUN_DIR": str(tmp_path), "RUN_WS_PORT": str(ws_port),
           "RUN_DISPATCHER_PORT": str(free_port()), "RUN_RATE": "300"}
    env.pop("SHARDCAST_KAFKA_BOOTSTRAP", None)
    env.pop("SHARDCAST_REDIS_URL", None)
    out = open(tmp_path / "run.out", "w+")  # noqa: SIM115
    run = subprocess.Popen([sys.executable, "-m", "devstack.run"], cwd=ROOT, env=env,
                           stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        text = ""
        while "shardcast is up" not in text:
            assert run.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
            text = (tmp_path / "run.out").read_text()
        pids = [int(p) for p in re.findall(r"pid=(\d+)", text)]
        assert len(pids) == 7  # redis, kafka, 3 shards, dispatcher, producer
        urls = re.findall(r"shard WebSocket: (ws://\S+)", text)
        assert len(urls) == 3
        redis_url = re.search(r"redis=(redis://\S+)", text).group(1)
        client = WsClient(urls[1])
        client.subscribe("BTC-USD")
        doc = json.loads(client.ticks(3, timeout_s=30)[0])
        assert doc["token"] == "BTC-USD" and "price" in doc["data"]
        client.close()
        r = redis.Redis.from_url(redis_url)
        assert r.scard("shardcast:shards") == 3
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(60)
    assert run.returncode == 0
    time.sleep(0.5)
    assert [p for p in pids if _alive(p)] == []
    assert "nothing left running" in (tmp_path / "run.out").read_text()
