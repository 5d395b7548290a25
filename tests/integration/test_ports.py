"""Ports that cannot race: our servers bind port 0 and report what they got; redis-server and the
Kafka broker, which cannot, retry on another port when theirs was taken before they bound it."""

from __future__ import annotations

import contextlib
import socket

import pytest

from devstack.kafka_server import KafkaServer
from devstack.procs import port_open
from devstack.redis_server import RedisServer
from devstack.stack import PortInUseError, start_shard
from tests.integration.helpers import WsClient, produce, producer, registry

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _taken_port(shared: bool = False):
    """A loopback port another socket listens on for the duration; `shared`: with SO_REUSEPORT,
    as another gRPC server holds its port (one more such socket could then bind it too)."""
    with socket.socket() as s:
        if shared:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_shards_and_dispatcher_on_port_0_report_distinct_bound_ports(stack):
    """Two shards and a dispatcher started on port 0 report distinct ports, serve on them, and the
    shards register the ports they bound (what dispatchers dial and the front door routes to)."""
    a, b = stack.shard("A"), stack.shard("B")
    d = stack.dispatcher()
    ports = [a.ws_port, a.grpc_port, b.ws_port, b.grpc_port, d.http_port, d.admin_port]
    assert 0 not in ports and len(set(ports)) == 6
    reg = registry(stack)
    for sp in (a, b):
        info = reg.load_shards()[0][sp.shard_id]
        assert (info.ws_addr, info.grpc_addr) == (sp.ws_url, f"127.0.0.1:{sp.grpc_port}")
    client = WsClient(b.ws_url)
    client.subscribe("PORT-1")
    produce(producer(stack.kafka.bootstrap), stack.c.topic, [("PORT-1", b'{"p":1}')])
    assert len(client.ticks(1)) == 1  # the dispatcher dialled B's reported gRPC port
    assert d.stats()["shards"]["B"]["records_sent"] == 1


@pytest.mark.parametrize("which", ["ws_port", "grpc_port"])
def test_a_shard_given_a_taken_port_fails_its_start_instead_of_sharing_it(stack, which):
    """A port given explicitly and already listened on fails the shard's start (PortInUseError),
    for gRPC too, whose default SO_REUSEPORT would otherwise share the port with its owner."""
    with _taken_port(shared=True) as port, pytest.raises(PortInUseError):
        start_shard(stack.c, "TAKEN", **{which: port})
    assert registry(stack).load_shards() == ({}, [])  # it never registered


def test_redis_retries_on_another_port_when_its_port_is_taken(tmp_path):
    """redis-server whose port is taken before it binds (its first start exits "Address already in
    use") starts on another free port; an exact port (no fallback) fails at once instead."""
    with _taken_port() as port:
        with pytest.raises(RuntimeError):
            RedisServer(tmp_path / "exact", port).start()
        server = RedisServer(tmp_path / "fallback", port, fallback=True).start()
        try:
            assert server.port != port and port_open("127.0.0.1", server.port)
            log = (tmp_path / "fallback" / "redis.log").read_text()
            assert f"127.0.0.1:{port}" in log and "Address already in use" in log  # the retry happened
            server.stop()
            server.start()  # a restart keeps the address its clients know
            assert server.url.endswith(f":{server.port}/0") and server.port != port
        finally:
            server.stop()


def test_kafka_retries_on_other_ports_when_its_port_is_taken(tmp_path):
    """A Kafka broker whose port is taken before it binds (it exits "Address already in use") is
    started again on free ports and answers there with its own cluster id."""
    with _taken_port() as port:
        server = KafkaServer(tmp_path / "kafka", port, 0, fallback=True).start(timeout_s=120)
        try:
            assert server.port != port and port_open("127.0.0.1", server.port)
            assert "Address already in use" in (tmp_path / "kafka" / "kafka.log").read_text()
            server.create_topic("ports-ok", 1)
        finally:
            server.stop()
