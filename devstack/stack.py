"""Start our own processes (shards, dispatcher, demo producer) as children, health-checked.

Shared by `make run`, the tests and the benchmarks.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.procs import (
    IN_USE,
    file_size,
    http_json,
    log_since,
    python_cmd,
    read_ports_file,
    spawn,
    stop,
    wait_until,
)


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
    """Start a shard and wait until it is healthy.

    Ports not given are 0: the shard binds whatever free port the kernel gives it and reports
    them in its ports file, so no other process can take one between choosing and binding.
    """
    log = c.logdir / f"shard-{shard_id}.log"
    ports_file = _ports_file(c, f"shard-{shard_id}")
    cmd = python_cmd("-m", "shard", "--id", shard_id, "--ws-port", str(ws_port or 0),
                     "--grpc-port", str(grpc_port or 0), "--ports-file", str(ports_file),
                     "--namespace", c.namespace, *(extra or []))
    proc, ports = _spawn_bound(cmd, log, c, ports_file, wait_s, f"shard {shard_id}")
    sp = ShardProc(shard_id, ports["ws_port"], ports["grpc_port"], proc, log)
    wait_until(sp.healthy, wait_s, f"shard {shard_id}", proc=sp.proc)
    return sp


def start_dispatcher(c: Common, dispatcher_id: str = "d1", mode: str = "targeted",
                     extra: list[str] | None = None, http_port: int | None = None,
                     admin_port: int | None = None, wait_s: float = 60) -> DispatcherProc:
    """Start a dispatcher and wait until it is healthy; ports not given are 0, as for shards."""
    log = c.logdir / f"dispatcher-{dispatcher_id}.log"
    ports_file = _ports_file(c, f"dispatcher-{dispatcher_id}")
    cmd = python_cmd("-m", "dispatcher", "--id", dispatcher_id, "--kafka-bootstrap",
                     c.kafka_bootstrap, "--topic", c.topic, "--namespace", c.namespace,
                     "--mode", mode, "--http-port", str(http_port or 0),
                     "--admin-port", str(admin_port or 0), "--ports-file", str(ports_file),
                     *(extra or []))
    proc, ports = _spawn_bound(cmd, log, c, ports_file, wait_s, f"dispatcher {dispatcher_id}")
    dp = DispatcherProc(ports["http_port"], proc, log, ports["admin_port"])
    wait_until(dp.healthy, wait_s, f"dispatcher {dispatcher_id}", interval_s=0.2, proc=dp.proc)
    return dp


class PortInUseError(RuntimeError):
    """A port given to `start_shard`/`start_dispatcher` was taken: the process could not bind it."""


def _spawn_bound(cmd: list[str], log: Path, c: Common, ports_file: Path, wait_s: float,
                 what: str) -> tuple[subprocess.Popen, dict[str, int]]:
    """Spawn; return the process and the ports it bound. PortInUseError if it exited unable to bind."""
    offset = file_size(log)
    proc = spawn(cmd, log, c.proc_env())
    try:
        return proc, read_ports_file(ports_file, wait_s, what, proc)
    except RuntimeError as exc:  # it exited before binding everything
        said = log_since(log, offset)
        if IN_USE in said:
            raise PortInUseError(f"{what}: a port it was given is in use") from exc
        raise RuntimeError(f"{exc}; its log:\n{said[-3000:]}") from exc


def _ports_file(c: Common, name: str) -> Path:
    """A path no other process of ours writes: one per start (a restarted shard keeps its id)."""
    path = c.logdir / "ports" / f"{name}-{secrets.token_hex(4)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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
