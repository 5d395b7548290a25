"""Test-side clients: a WebSocket subscriber and a Kafka producer (plain threads, no gevent)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import threading
import time

import redis
import websocket
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from common.registry import Registry


class WsClient:
    """A blocking WebSocket client that speaks the shard protocol."""

    def __init__(self, url: str, timeout_s: float = 10) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout_s)
        self.next_id = 0

    def request(self, doc: dict) -> dict:
        """Send a request with a fresh id and return the reply carrying that id."""
        self.next_id += 1
        doc = {**doc, "id": self.next_id}
        self.ws.send(json.dumps(doc))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                return msg

    def send_raw(self, text: str) -> dict:
        """Send any text and return the next non-tick frame."""
        self.ws.send(text)
        return self.next_control()

    def next_control(self) -> dict:
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("type") != "tick":
                return msg

    def subscribe(self, *tokens: str) -> dict:
        reply = self.request({"op": "subscribe", "tokens": list(tokens)})
        assert reply["type"] == "subscribed", reply
        return reply

    def unsubscribe(self, *tokens: str) -> dict:
        reply = self.request({"op": "unsubscribe", "tokens": list(tokens)})
        assert reply["type"] == "unsubscribed", reply
        return reply

    def ticks(self, n: int, timeout_s: float = 30) -> list[str]:
        """Return the raw text of the next `n` tick frames."""
        return self.data_frames(n, timeout_s, kinds=("tick",))

    def data_frames(self, n: int, timeout_s: float = 30,
                    kinds: tuple[str, ...] = ("tick", "snapshot")) -> list[str]:
        """Return the raw text of the next `n` frames of the given types (pings are answered)."""
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            op, frame = self.ws.recv_data_frame(True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big")
                raise AssertionError(f"closed with {code} {frame.data[2:]!r} after {len(out)} frames")
            if op != websocket.ABNF.OPCODE_TEXT:
                continue  # a ping (websocket-client answers it) or a pong
            text = frame.data.decode()
            if json.loads(text).get("type") in kinds:
                out.append(text)
        return out

    def close(self) -> None:
        self.ws.close()


TICK_HEAD = re.compile(r'\{"type":"tick","token":"([^"]*)","partition":(\d+),"offset":(\d+),"ts":(\d+),')


def tick_payload(frame: str, token: str) -> tuple[tuple[int, int], bytes]:
    """((partition, offset), the embedded payload bytes) of a tick frame of `token`.

    Checks the frame's exact layout: the position fields, then the payload
    embedded verbatim as the last member.
    """
    m = TICK_HEAD.match(frame)
    assert m is not None and m[1] == token, frame[:200]
    body = frame[m.end():].encode()
    assert body.startswith(b'"data":') and body.endswith(b"}"), frame[:200]
    return (int(m[2]), int(m[3])), body[len(b'"data":'):-1]


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1)


def batch_producer(bootstrap: str) -> KafkaProducer:
    """A producer that sends nothing until `produce` flushes: each partition's records of one
    `produce` call then travel as one record batch, which a consumer fetches whole, in one poll
    (so per-poll and per-batch counters are exact)."""
    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=600_000, delivery_timeout_ms=700_000,
                         batch_size=1 << 20, acks=1)


def partition_of(token: str, partitions: int = 3) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) gives `token`; each test
    topic has 3."""
    return (murmur2(token.encode()) & 0x7FFFFFFF) % partitions


def same_partition_token(token: str, prefix: str, partitions: int = 3) -> str:
    """A token `{prefix}{i}` on `token`'s partition: a record of it produced after records of
    `token` is consumed, and so routed, after them."""
    want = partition_of(token, partitions)
    return next(t for i in itertools.count() if partition_of(t := f"{prefix}{i}", partitions) == want)


def produce(p: KafkaProducer, topic: str, items: list[tuple[str, bytes]]) -> None:
    for token, payload in items:
        p.send(topic, key=token.encode(), value=payload)
    p.flush(30)


def wait_for(check, timeout_s: float = 10, interval_s: float = 0.02, what: str = "condition"):
    """Poll until `check()` is truthy; return its value and the seconds it took."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def registry(stack) -> Registry:
    """The test's own view of its namespace in the registry (Redis round trips, tests only)."""
    return Registry(redis.Redis.from_url(stack.c.redis_url), stack.c.namespace)


def ws_client(url: str, timeout_s: float = 10, **options) -> WsClient:
    """A WsClient whose upgrade carries websocket-client options (header=[…], origin=…)."""
    client = WsClient.__new__(WsClient)
    client.ws = websocket.create_connection(url, timeout=timeout_s, **options)
    client.next_id = 0
    return client


def upgrade_status(url: str, **options) -> int:
    """The HTTP status an upgrade gets: 101 when it succeeds (that connection is closed again)."""
    try:
        ws = websocket.create_connection(url, timeout=10, **options)
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    ws.close()
    return 101


def close_code(client: WsClient, timeout_s: float = 15) -> int:
    """Read (and drop) frames until the server's close frame; return its code."""
    deadline = time.monotonic() + timeout_s
    while True:
        client.ws.settimeout(max(0.1, deadline - time.monotonic()))
        op, frame = client.ws.recv_data_frame(True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big")
        if time.monotonic() > deadline:
            raise AssertionError(f"no close frame within {timeout_s}s")


# A deterministic "records dropped, one token has no value left" scenario (4010 vs resync):
# two tokens of one partition (of the 3 each test topic has), so "consumed last" is produce order.
GAP_OLD, GAP_NEW = "GAP-2", "GAP-6"
# No stream pings (the frozen shard's one credit goes to the first record), a 200-record queue,
# and a one-entry last-value map that ends up holding GAP_NEW only.
GAP_DISPATCHER_FLAGS = ("--max-poll-records", "100", "--shard-queue-records", "200",
                        "--last-values-max", "1", "--stream-ping-s", "60")
GAP_SHARD_FLAGS = ("--ingest-window", "1", "--heartbeat-ttl-s", "60")


def overflow_while_frozen(shard, dispatcher, feed: KafkaProducer, topic: str) -> None:
    """SIGSTOP `shard`; one GAP_OLD record (s=-1) takes its only credit, then 1000 alternating
    records (s=0..999) overflow its queue and are all offered; SIGCONT. GAP_OLD's subscribers then
    get a gap marker (4010), GAP_NEW's a resync with s=999 — each exactly once."""
    assert len({(murmur2(t.encode()) & 0x7FFFFFFF) % 3 for t in (GAP_OLD, GAP_NEW)}) == 1
    queue = lambda: dispatcher.stats()["shards"][shard.shard_id]  # noqa: E731
    os.kill(shard.proc.pid, signal.SIGSTOP)
    try:
        produce(feed, topic, [(GAP_OLD, b'{"s":-1}')])
        wait_for(lambda: queue()["in_flight_records"] == 1, what="the frozen shard's one credit used")
        produce(feed, topic, [((GAP_OLD, GAP_NEW)[i % 2], b'{"s":%d}' % i) for i in range(1000)])
        wait_for(lambda: queue()["records_dropped"] > 0, what="the queue overflowing")
        wait_for(lambda: queue()["records_offered"] == 1001, what="every record offered")
    finally:
        os.kill(shard.proc.pid, signal.SIGCONT)


def committed_equals_end(bootstrap: str, group: str, topic: str) -> bool:
    """Every partition of `topic` has `group`'s committed offset at its end offset."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        committed = admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic)]
        ends = probe.end_offsets(tps)
        return all(committed.get(tp) is not None and committed[tp].offset == ends[tp] for tp in tps)
    finally:
        admin.close()
        probe.close()


class TickReader:
    """Reads `n` tick values (`data.s`) on a thread while the test produces, as a live client
    does: what sits unread in a socket counts as behind, so a test must not read only at the end."""

    def __init__(self, client: WsClient, n: int) -> None:
        self.got: list[int] = []
        self.errors: list[BaseException] = []
        self._client, self._n = client, n
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while len(self.got) < self._n:
                self.got.append(json.loads(self._client.ticks(1, timeout_s=60)[0])["data"]["s"])
        except BaseException as exc:  # reported to the test by `join`
            self.errors.append(exc)

    def join(self, timeout_s: float = 30) -> list[int]:
        """The values read; raises what the reading thread raised."""
        self._thread.join(timeout_s)
        assert not self.errors, self.errors
        return self.got
