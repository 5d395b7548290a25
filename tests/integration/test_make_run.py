"""`make run`'s program brings the whole stack up on its own and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
import redis

from devstack.frontdoor import find_nginx
from devstack.procs import ROOT, port_open
from tests.integration.helpers import WsClient, wait_for

pytestmark = pytest.mark.integration
NGINX = find_nginx() is not None  # without it make run starts everything but the front door


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
    # Port 0: every server of ours binds a free port itself (the banner says which), so a test
    # run never collides with a `make run` on the default ports or with another test.
    env = {**os.environ, "RUN_DIR": str(tmp_path), "RUN_WS_PORT": "0", "RUN_DISPATCHER_PORT": "0",
           "RUN_ADMIN_PORT": "0", "RUN_FRONT_PORT": "0", "RUN_RATE": "300", **extra_env}
    for name in ("SHARDCAST_KAFKA_BOOTSTRAP", "SHARDCAST_REDIS_URL"):
        if name not in extra_env:
            env.pop(name, None)
    out = open(tmp_path / "run.out", "w+")  # noqa: SIM115
    run = subprocess.Popen([sys.executable, "-m", "devstack.run"], cwd=ROOT, env=env,
                           stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "shardcast is up" in (tmp_path / "run.out").read_text() or run.poll() is not None,
                 timeout_s=180, interval_s=0.2, what="the banner")
    finally:
        text = (tmp_path / "run.out").read_text()
        if "shardcast is up" not in text:
            _interrupt(run)
    assert "shardcast is up" in text, text
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


def _banner(text: str) -> list[str]:
    """The banner's lines, from "shardcast is up" on."""
    return text[text.index("shardcast is up"):].splitlines()


def _front_door_first(text: str) -> tuple[str, int] | None:
    """The banner leads with the front door and the demo page behind it: (its URL, its port)."""
    lines = _banner(text)
    if not NGINX:
        assert lines[1].startswith("  front door: none (nginx not found")
        return None
    url = re.fullmatch(r"  front door \(one URL, nginx over the live shards\): (ws://127\.0\.0\.1:(\d+)/ws)",
                       lines[1])
    assert url is not None, lines[:3]
    token = re.search(r"demo token \(every token, 24 h\): (\S+)", text).group(1)
    assert lines[2] == f"  demo page: http://127.0.0.1:{url[2]}/?token={token}"
    return url[1], int(url[2])


def _check_front_door(front: tuple[str, int] | None, text: str) -> None:
    """Through the front door: live ticks on /ws, the demo page on /, its own /healthz."""
    if front is None:
        return
    url, port = front
    _watch_ticks(url, text)
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
    assert b"<title>shardcast" in page  # a shard's demo page, through nginx
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as r:
        doc = json.loads(r.read())
    assert (doc["ok"], doc["shards"]) == (True, ["shard-1", "shard-2", "shard-3"])


def test_run_starts_everything_serves_live_ticks_and_ctrl_c_cleans_up(tmp_path):
    """The stack starts Kafka, Redis, 3 shards, dispatcher, producer and the front door; the banner
    leads with the front door, then Kafka and Redis in use; ticks flow; SIGINT stops all."""
    run, text = _run_stack(tmp_path, {})
    try:
        pids = [int(p) for p in re.findall(r"pid=(\d+)", text)]
        assert len(pids) == 7 + NGINX  # redis, kafka, 3 shards, dispatcher, producer, front door
        front = _front_door_first(text)
        bootstrap = re.search(r"kafka=(\S+)", text).group(1)
        redis_url = re.search(r"redis=(redis://\S+)", text).group(1)
        assert f"  Kafka bootstrap: {bootstrap}  (topic ticks)" in _banner(text)
        assert f"  Redis URL: {redis_url}  (namespace shardcast)" in _banner(text)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", bootstrap) and redis_url.startswith("redis://127.0.0.1:")
        urls = re.findall(r"shard WebSocket: (ws://\S+)", text)
        assert len(urls) == 3
        _watch_ticks(urls[1], text)
        page = urllib.request.urlopen(urls[1].replace("ws://", "http://").removesuffix("ws")).read()
        assert b"<title>shardcast" in page  # the demo page each shard serves
        _check_front_door(front, text)
        assert redis.Redis.from_url(redis_url).scard("shardcast:shards") == 3
    finally:
        _interrupt(run)
    assert run.returncode == 0
    wait_for(lambda: not any(_alive(p) for p in pids), timeout_s=30, what="every process gone")
    assert front is None or not port_open("127.0.0.1", front[1])  # nginx went with its front door
    assert "nothing left running" in (tmp_path / "run.out").read_text()


def test_run_against_existing_kafka_and_redis_leaves_no_registry_entries(tmp_path, kafka, redis_server):
    """Given existing servers, run starts only our processes and Ctrl-C leaves the registry empty."""
    run, text = _run_stack(tmp_path, {"SHARDCAST_KAFKA_BOOTSTRAP": kafka.bootstrap,
                                      "SHARDCAST_REDIS_URL": redis_server.url})
    try:
        pids = [int(p) for p in re.findall(r"pid=(\d+)", text)]
        assert len(pids) == 5 + NGINX  # 3 shards, dispatcher, producer, front door: no servers of its own
        assert f"  Kafka bootstrap: {kafka.bootstrap}  (topic ticks)" in _banner(text)
        assert f"  Redis URL: {redis_server.url}  (namespace shardcast)" in _banner(text)
        _watch_ticks(re.findall(r"shard WebSocket: (ws://\S+)", text)[0], text)
        _check_front_door(_front_door_first(text), text)
        r = redis.Redis.from_url(redis_server.url)
        assert r.scard("shardcast:shards") == 3
    finally:
        _interrupt(run)
    assert run.returncode == 0
    assert r.keys("shardcast:*") == []
    wait_for(lambda: not any(_alive(p) for p in pids), timeout_s=30, what="every process gone")
    assert kafka.proc.poll() is None and r.ping()  # the existing servers keep running
