"""A single-node Apache Kafka broker (KRaft) from the Maven-fetched jars in .cache/kafka/lib."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from devstack.procs import (
    BIND_ATTEMPTS,
    IN_USE,
    ROOT,
    file_size,
    free_port,
    log_since,
    port_open,
    spawn,
    stop,
    wait_until,
)

KAFKA_LIB = ROOT / ".cache" / "kafka" / "lib"
LOG4J = ROOT / "devstack" / "kafka" / "log4j2.properties"

PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.ms=3600000
log.segment.bytes=67108864
"""


class KafkaServer:
    """One broker+controller process; data under `workdir`, removed on `stop(wipe=True)`.

    Ports work as in `RedisServer`: 0 means any free port, retried with other
    free ports (a bounded number of times) when the broker exits because one
    was taken before it bound it; the broker must be told its port up front,
    since it advertises it. A given port is used exactly unless `fallback`.
    """

    def __init__(self, workdir: Path, port: int = 0, controller_port: int = 0,
                 fallback: bool = False) -> None:
        self.workdir = workdir
        self.port = port
        self.controller_port = controller_port
        self.fallback = fallback or port == 0 or controller_port == 0
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java not found: Kafka needs a JDK 17+")
        if not any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"no Kafka jars in {KAFKA_LIB}: run `make kafka-jars`")
        return [java, "-Xms256m", "-Xmx512m", f"-Dlog4j2.configurationFile={LOG4J}",
                "-cp", f"{KAFKA_LIB}/*", *args]

    def start(self, timeout_s: float = 90) -> KafkaServer:
        """Format fresh storage, start the broker, wait for a metadata answer from it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "kafka.log"
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = self.port or free_port()
            self.controller_port = self.controller_port or free_port()
            offset = file_size(log)
            try:
                self._start_on(log, timeout_s)
            except RuntimeError:
                if not (self.fallback and attempt < BIND_ATTEMPTS and IN_USE in log_since(log, offset)):
                    raise
                self.port = self.controller_port = 0  # one was taken meanwhile: other free ports
                continue
            self.fallback = False  # from now on this is the address clients know
            return self
        raise AssertionError("unreachable")

    def _start_on(self, log: Path, timeout_s: float) -> None:
        """Start on the current ports; RuntimeError if the broker exits (e.g. a port is taken)."""
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        props = self.workdir / "server.properties"
        props.write_text(PROPERTIES.format(port=self.port, cport=self.controller_port, data=data))
        cluster_id = _cluster_id()
        fmt = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
            capture_output=True, text=True, timeout=120,
        )
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        self.proc = spawn(self._java("kafka.Kafka", str(props)), log)
        wait_until(lambda: port_open("127.0.0.1", self.port), timeout_s, "kafka port", proc=self.proc)
        # Our broker answers (its cluster id), not another server holding the port we failed to bind.
        wait_until(lambda: self._cluster_id() == cluster_id, timeout_s, "kafka metadata",
                   interval_s=0.5, proc=self.proc)

    def _metadata_ok(self) -> bool:
        """The broker answers a metadata request (bench.chaos_faults waits on it after a restart)."""
        return bool(self._cluster_id())

    def _cluster_id(self) -> str:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            return admin.describe_cluster()["cluster_id"]
        finally:
            admin.close()

    def create_topic(self, name: str, partitions: int, timeout_s: float = 30) -> None:
        """Create a topic (idempotent) and wait until every partition has a leader."""
        create_topic(self.bootstrap, name, partitions, timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout_s=20)
            self.proc = None


def _cluster_id() -> str:
    """A Kafka cluster id (base64url of a UUID) that the CLI won't take for a flag."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def create_topic(bootstrap: str, name: str, partitions: int, timeout_s: float = 30) -> None:
    """Create `name` on any Kafka (ours or an existing one) and wait for its leaders."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            parts = probe.partitions_for_topic(name)
            if parts and len(parts) >= partitions:
                return
            time.sleep(0.2)
        raise TimeoutError(f"topic {name} has no leaders after {timeout_s}s")
    finally:
        probe.close()
