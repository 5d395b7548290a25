"""Session-wide real servers: one Kafka broker and one redis-server on free loopback ports.

Every server picks its own port as it binds (port 0), or, where it cannot (redis-server, the
Kafka broker), retries with another free port when one was taken before it bound it.

Each integration test gets its own registry namespace, topic and consumer group,
so tests never see each other's state; our own processes (shards, dispatcher)
run as subprocesses so pytest itself is never gevent-patched.
"""

from __future__ import annotations

import os

# Before anything imports grpc: no gRPC fork handlers in pytest (see devstack/procs.py).
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from devstack.kafka_server import KafkaServer
from devstack.procs import stop
from devstack.redis_server import RedisServer
from devstack.stack import Common, start_dispatcher, start_shard


@pytest.fixture(scope="session")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="shardcast-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(workdir):
    server = RedisServer(workdir / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka(workdir):
    server = KafkaServer(workdir / "kafka").start()
    yield server
    server.stop()


class Stack:
    """Processes of one test, all stopped (and their logs shown on failure) at teardown."""

    def __init__(self, common: Common, kafka: KafkaServer) -> None:
        self.c = common
        self.kafka = kafka
        self.procs = []

    def shard(self, shard_id: str, *extra: str, **kw):
        sp = start_shard(self.c, shard_id, extra=list(extra), **kw)
        self.procs.append(sp)
        return sp

    def dispatcher(self, mode: str = "targeted", *extra: str, dispatcher_id: str = "d1"):
        args = ["--group", f"g-{self.c.namespace}", "--offset-reset", "earliest",
                "--registry-refresh-s", "0.2", *extra]
        dp = start_dispatcher(self.c, dispatcher_id, mode, extra=args)
        self.procs.append(dp)
        return dp

    def logs(self) -> str:
        out = []
        for p in self.procs:
            text = p.log.read_text(errors="replace") if p.log.exists() else ""
            out.append(f"===== {p.log.name}\n{text[-4000:]}")
        return "\n".join(out)

    def close(self) -> None:
        for p in reversed(self.procs):
            stop(p.proc, timeout_s=10)


@pytest.fixture
def stack(request, kafka, redis_server, workdir):
    ns = f"t{uuid.uuid4().hex[:10]}"
    common = Common(redis_url=redis_server.url, namespace=ns, logdir=workdir / "logs" / ns,
                    kafka_bootstrap=kafka.bootstrap, topic=f"ticks-{ns}")
    kafka.create_topic(common.topic, 3)
    s = Stack(common, kafka)
    yield s
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(s.logs())
    s.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
