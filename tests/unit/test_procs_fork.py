"""Spawning children from a process that holds a live gRPC channel never runs gRPC's fork handlers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from devstack.procs import ROOT

# A process like the test runner: a gRPC server and a channel with a finished call, then children
# spawned the way devstack spawns shards. gRPC logs from its fork handler when it runs.
SCRIPT = textwrap.dedent("""
    import sys
    from concurrent import futures
    from pathlib import Path

    from devstack.procs import spawn  # first, as in tests/conftest.py and the devstack entry points

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    for _ in range(5):
        assert spawn(["true"], Path(sys.argv[1])).wait(10) == 0
    print("spawned")
""")


def test_children_spawn_without_grpc_fork_handlers(tmp_path):
    """With devstack.procs imported first, five spawns beside a live gRPC channel succeed and gRPC
    never enters its fork handler (which, enabled, waits in fork() for gRPC's threads)."""
    env = {"PATH": "/usr/bin:/bin", "GRPC_VERBOSITY": "INFO", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "child.log")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "spawned", done.stderr[-2000:]
    assert "fork" not in done.stderr, done.stderr[-2000:]
