"""A throwaway redis-server on loopback (Debian's package; `make` installs it if absent)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack.procs import BIND_ATTEMPTS, IN_USE, file_size, free_port, log_since, spawn, stop, wait_until


class RedisServer:
    """redis-server with no persistence, in `workdir`, on `port`.

    Port 0 means any free port: redis-server cannot bind port 0 and report it,
    so a free one is chosen and, if another process takes it before
    redis-server binds it (it exits saying the address is in use), another is
    tried, a bounded number of times. A given port is used exactly, unless
    `fallback` allows any free one when it is taken. Once started, the server
    keeps its port: a restart must come back where its clients look.
    """

    def __init__(self, workdir: Path, port: int = 0, fallback: bool = False) -> None:
        self.workdir = workdir
        self.port = port
        self.fallback = fallback or port == 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: run `make redis` (apt install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = self.port or free_port()
            offset = file_size(log)
            try:
                self._start_on(exe, log, timeout_s)
            except RuntimeError:
                if not (self.fallback and attempt < BIND_ATTEMPTS and IN_USE in log_since(log, offset)):
                    raise
                self.port = 0  # taken meanwhile: another free port
                continue
            self.fallback = False  # from now on this is the address clients know
            return self
        raise AssertionError("unreachable")

    def _start_on(self, exe: str, log: Path, timeout_s: float) -> None:
        """Start on `self.port`; RuntimeError if the process exits (e.g. the port is taken)."""
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"]
        self.proc = spawn(cmd, log)
        # One try per poll (redis-py retries with backoff by default): the wait sees an exit at once.
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1,
                             retry=Retry(NoBackoff(), 0))
        # Our own process answers, not another server that holds the port we failed to bind.
        wait_until(lambda: client.info("server")["process_id"] == self.proc.pid, timeout_s, "redis",
                   proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout_s=5)
            self.proc = None
