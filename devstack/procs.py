"""Child-process helpers: free ports, ports files, readiness waits, and no orphans."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
# grpcio turns on gRPC's fork handlers by default: in a process that holds a gRPC channel (the
# tests' admin clients, the benches), every fork() first waits for gRPC's own threads to pause.
# One such wait never ended and hung `make test` inside Popen (pytest's timeout cannot interrupt
# fork()), and a child can abort in gRPC's after-fork handler before it execs. Our children exec
# at once and share no gRPC state with us, so the handlers only add risk. Read when gRPC starts:
# tests/conftest.py sets it before anything imports grpc; this covers the other entry points.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


_HANDED_OUT: set[int] = set()
# Servers that cannot bind port 0 and report it (redis-server, a Kafka broker, which advertises its
# port): a free port taken before they bind it is retried with another, at most this many times.
BIND_ATTEMPTS = 5
IN_USE = "Address already in use"  # how both say so in their logs (strerror of EADDRINUSE)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this process never
    handed out before (the kernel may offer a just-released port again at once)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_bindable(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:`port` now (nothing listens on it and no
    connection uses it as its local port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def read_ports_file(path: Path, timeout_s: float, what: str, proc: subprocess.Popen) -> dict[str, int]:
    """The ports a child bound, from the `--ports-file` it writes (atomically) once all are bound.

    Fails fast if the child exits first (a port given explicitly may be taken), or after `timeout_s`.
    """
    found: dict[str, int] = {}

    def written() -> bool:
        found.update(json.loads(path.read_text()))
        return True

    wait_until(written, timeout_s, f"{what}: ports file", interval_s=0.05, proc=proc)
    return found


def log_since(path: Path, offset: int) -> str:
    """What a log file gained after `offset` bytes (a child's log is appended to across restarts)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1,
               proc: subprocess.Popen | None = None) -> None:
    """Poll `check` until true; fail fast if `proc` exits, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval_s)
    if proc is not None and proc.poll() is not None:  # exited during the last, slow check
        raise RuntimeError(f"{what}: process exited with {proc.returncode}")
    raise TimeoutError(f"{what}: not ready after {timeout_s}s")


def http_json(url: str, timeout_s: float = 2.0) -> tuple[int, object]:
    """GET a JSON document; returns (status, parsed body) for 2xx and error statuses alike."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so a killed runner leaves no orphans."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def spawn(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen:
    """Start a child in its own process group, output to `log_path`, tied to our lifetime.

    Call it from the main thread: the kernel ties the child to the *thread*
    that forked it, so a child spawned from a short-lived thread dies with it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        list(cmd), stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
        start_new_session=True, preexec_fn=_die_with_parent,
    )


def stop(proc: subprocess.Popen, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal the child's process group, wait, then SIGKILL whatever is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


def python_cmd(*args: str) -> list[str]:
    """Run a module with the current interpreter (the venv's, under make)."""
    return [sys.executable, *args]
