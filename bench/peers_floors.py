"""What the two Python floors of the peers benchmark share: the tick message, subscribe parsing,
and their Kafka consumer.

A *floor* is the least a Python server must do to deliver the benchmark's
ticks: consume the topic in-process, build each tick's message once, write
it to every subscriber of its token. Nothing else — no validation of
records, no authentication, no slow-client handling or bounded queues, no
registry, no metrics, no keepalive of its own (websockets pings by default;
the gevent floor does not). They speak the subset of shardcast's client
protocol that the benchmark uses, and their tick message has shardcast's
layout (same fields, same size), so one adapter reads all three.
"""

from __future__ import annotations

import json

from kafka import KafkaConsumer

SUBSCRIBED = b'{"type":"subscribed","tokens":%s}'


def tick_message(token: bytes, partition: int, offset: int, ts_ms: int, value: bytes) -> bytes:
    """shardcast's tick layout, the record value embedded verbatim (it is trusted here)."""
    return b'{"type":"tick","token":"%s","partition":%d,"offset":%d,"ts":%d,"data":%s}' % (
        token, partition, offset, ts_ms, value)


def parse_subscribe(msg: bytes | str) -> list[str] | None:
    """The tokens of a `{"op":"subscribe","tokens":[...]}` request, None for anything else."""
    try:
        doc = json.loads(msg)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("op") != "subscribe" or not isinstance(doc.get("tokens"), list):
        return None
    tokens = [t for t in doc["tokens"] if isinstance(t, str)]
    return tokens or None


def subscribed_ack(tokens: list[str]) -> bytes:
    return SUBSCRIBED % json.dumps(tokens, separators=(",", ":")).encode()


def consumer(bootstrap: str, topic: str) -> KafkaConsumer:
    """kafka-python, fetching as shardcast's dispatcher does (poll wait 50 ms, from the earliest offset).

    Without a consumer group: every partition, no heartbeats, no commits. (With a group,
    kafka-python's heartbeat thread under gevent's monkey-patching spins: 0.8 core when idle.)
    """
    return KafkaConsumer(topic, bootstrap_servers=bootstrap.split(","), group_id=None,
                         enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=50,
                         max_poll_records=5000, max_partition_fetch_bytes=1 << 20)
