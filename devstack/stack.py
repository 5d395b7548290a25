"""Start our own processes (shards, dispatcher, demo producer) as children, health-checked.

Shared by `make run`, the tests and the benchmarks.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.procs import free_port, http_json, python_cmd, spawn, stop, wait_until


@dataclass
class ShardProc:
    shard_id: str
    ws_port: int
    grpc_port: int
    proc: subprocess.Popen
    log: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def stats(self) -> dict:
        return http_json(f"http://127.0.0.1:{self.ws_port}/stats")[1]

    def healthy(self) -> bool:
        return http_json(f"http://127.0.0.1:{self.ws_port}/healthz")[0] == 200


@dataclass
class DispatcherProc:
    http_port: int
    proc: subprocess.Popen
    log: Path
    admin_port: int = 0

    @property
    def admin_target(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def get(self, path: str) -> tuple[int, object]:
        return http_json(f"http://127.0.0.1:{self.http_port}{path}")

    def stats(self) -> dict:
        return self.get("/stats")[1]

    def route(self, token: str) -> list[str]:
        return self.get(f"/route?token={token}")[1]["shards"]

    def healthy(self) -> bool:
        return self.get("/healthz")[0] == 200


@dataclass
class Common:
    """Where our processes find Kafka and Redis, and where they log.

    `env` goes to every process; it carries a fresh ingest secret (shards and
    dispatchers must share it) unless the caller set one. Secrets and the Redis
    URL travel in the environment, never on a command line.
    """

    redis_url: str
    namespace: str
    logdir: Path
    kafka_bootstrap: str = ""
    topic: str = "ticks"
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env.setdefault("SHARDCAST_INGEST_SECRET", secrets.token_urlsafe(32))

    def proc_env(self) -> dict[str, str]:
        return {"SHARDCAST_REDIS_URL": self.redis_url, **self.env}


def start_shard(c: Common, shard_id: str, ws_port: int | None = None,
                grpc_port: int | None = None, extra: list[str] | None = None,
                wait_s: float = 30) -> ShardProc:
    ws_port = ws_port or free_port()
    grpc_port = grpc_port or free_port()
    log = c.logdir / f"shard-{shard_id}.log"
    cmd = python_cmd("-m", "shard", "--id", shard_id, "--ws-port", str(ws_port),
                     "--grpc-port", str(grpc_port), "--namespace", c.namespace, *(extra or []))
    sp = ShardProc(shard_id, ws_port, grpc_port, spawn(cmd, log, c.proc_env()), log)
    wait_until(sp.healthy, wait_s, f"shard {shard_id}", proc=sp.proc)
    return sp


def start_dispatcher(c: Common, dispatcher_id: str = "d1", mode: str = "targeted",
                     extra: list[str] | None = None, http_port: int | None = None,
                     admin_port: int | None = None, wait_s: float = 60) -> DispatcherProc:
    http_port = http_port or free_port()
    admin_port = admin_port or free_port()
    log = c.logdir / f"dispatcher-{dispatcher_id}.log"
    cmd = python_cmd("-m", "dispatcher", "--id", dispatcher_id, "--kafka-bootstrap",
                     c.kafka_bootstrap, "--topic", c.topic, "--namespace", c.namespace,
                     "--mode", mode, "--http-port", str(http_port), "--admin-port", str(admin_port),
                     *(extra or []))
    dp = DispatcherProc(http_port, spawn(cmd, log, c.proc_env()), log, admin_port)
    wait_until(dp.healthy, wait_s, f"dispatcher {dispatcher_id}", interval_s=0.2, proc=dp.proc)
    return dp


def start_producer(c: Common, rate: float, tokens: int, metrics_port: int = 0) -> subprocess.Popen:
    cmd = python_cmd("-m", "demo.producer", "--kafka-bootstrap", c.kafka_bootstrap,
                     "--topic", c.topic, "--rate", str(rate), "--tokens", str(tokens),
                     "--metrics-port", str(metrics_port))
    return spawn(cmd, c.logdir / "producer.log", c.env)


def stop_all(procs: list[subprocess.Popen], timeout_s: float = 10) -> None:
    """SIGTERM everything first (so shards deregister in parallel), then reap each."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        stop(p, timeout_s)
