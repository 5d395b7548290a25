"""A throwaway redis-server on loopback (Debian's package; `make` installs it if absent)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from devstack.procs import spawn, stop, wait_until


class RedisServer:
    """redis-server with no persistence, in `workdir`, on `port`."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: run `make redis` (apt install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"]
        self.proc = spawn(cmd, self.workdir / "redis.log")
        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_until(client.ping, timeout_s, "redis", proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout_s=5)
            self.proc = None
