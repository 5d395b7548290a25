"""Kafka producer behind the admin API's `Publish`: the normal path, not a shortcut."""

from __future__ import annotations

import threading

from kafka import KafkaProducer
from kafka.errors import KafkaError

from dispatcher.admin_core import AdminCode, AdminError

SEND_TIMEOUT_S = 10.0


class KafkaPublisher:
    """Created on first use (most dispatchers never publish); thread-safe."""

    def __init__(self, bootstrap: str, topic: str, client_id: str, max_bytes: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self.max_bytes = max_bytes
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def publish(self, token: str, payload: bytes) -> tuple[int, int]:
        """Produce (key=token, value=payload) and wait for the broker: (partition, offset)."""
        try:
            meta = self._get().send(self.topic, key=token.encode(), value=payload).get(SEND_TIMEOUT_S)
        except KafkaError as exc:
            raise AdminError(AdminCode.UNAVAILABLE, f"Kafka did not take the record: {exc}") from exc
        return meta.partition, meta.offset

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap.split(","), client_id=self.client_id,
                    acks="all", linger_ms=0, max_request_size=self.max_bytes + (64 << 10),
                )
            return self._producer

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=2)
                self._producer = None
