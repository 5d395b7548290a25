"""The broker itself fails: a Kafka of this test's own (the session's is shared and never restarted),
SIGKILLed and restarted on its data while a dispatcher consumes from it."""

from __future__ import annotations

import signal

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from devstack.kafka_server import KafkaServer
from devstack.procs import port_bindable, spawn, wait_until
from tests.integration.helpers import committed_equals_end, wait_for
from tests.integration.seqcheck import Watcher

pytestmark = pytest.mark.integration
TOKENS = [f"KR-{i}" for i in range(6)]  # spread over the topic's 3 partitions


def _kill(server: KafkaServer) -> None:
    """SIGKILL the broker: no shutdown, every client's connection dies."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(30)
    server.proc = None


def _answers(bootstrap: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        admin.list_topics()
        return True
    finally:
        admin.close()


def _restart(server: KafkaServer, timeout_s: float = 120) -> None:
    """Start the killed broker again on its own data and ports (no reformat: its logs survive)."""
    for port in (server.port, server.controller_port):
        wait_until(lambda p=port: port_bindable(p), 30, f"port {port} free", interval_s=0.05)
    props = server.workdir / "server.properties"
    server.proc = spawn(server._java("kafka.Kafka", str(props)), server.workdir / "kafka.log")
    wait_until(lambda: _answers(server.bootstrap), timeout_s, "restarted broker", interval_s=0.5,
               proc=server.proc)


def _feed(bootstrap: str, topic: str, first: int, last: int) -> None:
    """{"s": n} for n in first..last to every token, flushed, then the producer closed."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=2)
    for n in range(first, last + 1):
        for token in TOKENS:
            p.send(topic, key=token.encode(), value=b'{"s":%d}' % n)
    p.flush(60)
    p.close(5)


def test_broker_restart_resumes_consumption_counts_commit_failures_and_loses_nothing(stack, workdir):
    """Broker SIGKILLed: commits fail and are counted while the poll loop goes on (a shard started
    during the outage gets its stream); restarted, consumption resumes where it was and every tick
    reaches the client exactly once, in order; commits resume up to the end. A dispatcher told to
    stop during a second outage exits at once and cleanly."""
    own = KafkaServer(workdir / f"kafka-{stack.c.namespace}").start()
    try:
        stack.c.kafka_bootstrap = own.bootstrap
        own.create_topic(stack.c.topic, 3)
        a = stack.shard("A")
        d = stack.dispatcher()
        w = Watcher(a.ws_url, TOKENS)
        _feed(own.bootstrap, stack.c.topic, 1, 30)
        wait_for(lambda: w.holds(dict.fromkeys(TOKENS, 30)), timeout_s=60, what="the first 30 ticks")
        wait_for(lambda: d.stats()["commits"] > 0, what="a first commit")

        _kill(own)
        wait_for(lambda: d.stats()["commit_failures"] >= 1, timeout_s=30, what="a commit failing")
        stack.shard("B")  # reconciled by the poll loop: it must not be stuck in a commit
        wait_for(lambda: d.stats()["shards"].get("B", {}).get("state") == "ready", timeout_s=30,
                 what="B's stream opened during the outage")
        commits = d.stats()["commits"]

        _restart(own)
        _feed(own.bootstrap, stack.c.topic, 31, 60)
        wait_for(lambda: w.holds(dict.fromkeys(TOKENS, 60)), timeout_s=120, what="the next 30 ticks")
        totals = w.totals()
        assert totals == {"ticks": 60 * len(TOKENS), "duplicates": 0, "silent_gaps": 0, "resyncs": 0}
        assert w.close_code is None and not w.error
        wait_for(lambda: d.stats()["commits"] > commits, timeout_s=30, what="commits resumed")
        wait_for(lambda: committed_equals_end(own.bootstrap, f"g-{stack.c.namespace}", stack.c.topic),
                 timeout_s=30, interval_s=0.3, what="everything committed")
        assert d.stats()["records_consumed"] >= 60 * len(TOKENS)  # a replay after the restart is allowed

        _kill(own)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0
    finally:
        if own.proc is not None:
            own.stop()
