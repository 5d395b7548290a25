"""A single-node Apache Kafka broker (KRaft) from the Maven-fetched jars in .cache/kafka/lib."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from devstack.procs import ROOT, port_open, spawn, stop, wait_until

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
    """One broker+controller process; data under `workdir`, removed on `stop(wipe=True)`."""

    def __init__(self, workdir: Path, port: int, controller_port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.controller_port = controller_port
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
        """Format fresh storage, start the broker, wait for a metadata answer."""
        self.workdir.mkdir(parents=True, exist_ok=True)
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
        self.proc = spawn(self._java("kafka.Kafka", str(props)), self.workdir / "kafka.log")
        wait_until(lambda: port_open("127.0.0.1", self.port), timeout_s, "kafka port", proc=self.proc)
        wait_until(self._metadata_ok, timeout_s, "kafka metadata", interval_s=0.5, proc=self.proc)
        return self

    def _metadata_ok(self) -> bool:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            admin.list_topics()
            return True
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
