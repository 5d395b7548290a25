"""Fault injectors for `make chaos`: each breaks one real component the way production breaks it.

Everything acts on real processes and real sockets on 127.0.0.1: TCP
connections are aborted with `ss -K` (the kernel's SOCK_DESTROY, which resets
both ends, as a middlebox or a NIC failure would), processes get SIGKILL,
SIGSTOP/SIGCONT. Redis comes back empty (a new data dir, no persistence);
Kafka comes back on its own data dir and ports, as after a crash. The
devstack classes only know how to start from scratch, so the restarts live
here rather than widening their API for one caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from devstack.kafka_server import KafkaServer
from devstack.procs import port_bindable, port_open, spawn, wait_until
from devstack.redis_server import RedisServer


def abort_tcp(dports: list[int]) -> int:
    """Abort, in one sweep, every TCP connection to 127.0.0.1 on any of `dports` (the client side;
    the kernel resets the server side too); return how many sockets were destroyed, so the caller
    can check the fault happened.

    One `ss` invocation for all ports, so clients reconnecting from the first
    port's sweep are not caught again by the next. Needs root (CAP_NET_ADMIN)
    and a kernel with CONFIG_INET_DIAG_DESTROY.
    """
    ports: list[str] = []
    for port in dports:
        ports += [*(["or"] if ports else []), "dport", "=", f":{port}"]
    out = subprocess.run(["ss", "-K", "-t", "-n", "dst", "127.0.0.1", "and", "(", *ports, ")"],
                         capture_output=True, text=True, timeout=60)
    # ss lists each socket it destroyed (one line each, after the header).
    return sum(1 for ln in out.stdout.splitlines()[1:] if ln.strip())


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the child's whole process group (spawn() gives each child its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def sigkill(proc: subprocess.Popen) -> None:
    """SIGKILL and reap, so the ports and files are free when this returns."""
    signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def pause(proc: subprocess.Popen) -> None:
    signal_group(proc, signal.SIGSTOP)


def resume(proc: subprocess.Popen) -> None:
    signal_group(proc, signal.SIGCONT)


def wait_port_free(port: int, timeout_s: float = 30) -> None:
    """A killed server's port may linger for a moment; a restart on it must wait."""
    wait_until(lambda: port_bindable(port), timeout_s, f"port {port} free", interval_s=0.05)


def kill_redis(server: RedisServer) -> None:
    """SIGKILL redis-server: no shutdown, no save, every client sees its socket die."""
    if server.proc is not None:
        sigkill(server.proc)
        server.proc = None


def restart_redis_empty(server: RedisServer, workdir: Path) -> RedisServer:
    """A new redis-server on the same port with a new, empty data dir: every key is gone."""
    wait_port_free(server.port)
    return RedisServer(workdir, server.port).start()  # RedisServer never persists: nothing to load


def kill_kafka(server: KafkaServer) -> None:
    """SIGKILL the broker (an unclean shutdown: it recovers its logs on restart)."""
    if server.proc is not None:
        sigkill(server.proc)
        server.proc = None


def restart_kafka(server: KafkaServer, timeout_s: float = 120) -> float:
    """Start the broker again on its own data dir and ports (no reformat, unlike `start()`).

    Returns the wall-clock time at which it accepted TCP connections (the end
    of the fault); returns only once it also answers a metadata request.
    """
    wait_port_free(server.port)
    wait_port_free(server.controller_port)
    props = server.workdir / "server.properties"
    server.proc = spawn(server._java("kafka.Kafka", str(props)), server.workdir / "kafka.log")
    wait_until(lambda: port_open("127.0.0.1", server.port), timeout_s, "kafka port",
               interval_s=0.02, proc=server.proc)
    accepting = time.time()
    wait_until(server._metadata_ok, timeout_s, "kafka metadata", interval_s=0.2, proc=server.proc)
    return accepting
