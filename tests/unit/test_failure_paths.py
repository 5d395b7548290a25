"""The dispatcher's failure paths with fakes at their seams: a shard stream that breaks (a fake gRPC
channel behind `StreamPolicy.auth`), shards that go away with records queued for them (`dropped_gone`),
records without a usable key, the consume-latency histogram (an injected clock) and failed commits."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import grpc
import pytest
from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaTimeoutError
from shardcast.v1 import ingest_pb2

from common.backoff import Backoff
from common.metrics import LATENCY_BUCKETS_S
from common.records import Record
from common.registry import ShardInfo
from dispatcher import consumer as consumer_mod
from dispatcher.config import parse_args as dispatcher_args
from dispatcher.consumer import COMMIT_TIMEOUT_MS, ConsumerLoop
from dispatcher.grpc_out import ShardSender, StreamPolicy
from dispatcher.shard_queue import ShardQueue
from dispatcher.streams import ShardStreams

DELIVER = "/shardcast.v1.ShardIngest/Deliver"


def until(check: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll a condition another thread makes true, with a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Broken(grpc.RpcError):
    """What a gRPC call raises when its stream dies."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(code)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class FakeShard:
    """The far side of the gRPC seam, one scripted behaviour per Deliver call, in order.

    A script entry is "refuse" (the call fails before any ack), "raise" (dialling itself fails,
    as an unreadable certificate does), ("break", n) (grant the window, ack n-1 batches, take
    the n-th and fail without acking it), ("hold", n) (grant, take n batches, ack none until
    cancelled) or "serve" (grant, ack everything; also once the script is used up).
    Every batch taken is recorded per call as (seq, [(token, offset, resync, gap), …]).
    """

    def __init__(self, script: list, window: int = 1) -> None:
        self.script = list(script)
        self.window = window
        self.calls: list[list[tuple[int, list[tuple[str, int, bool, bool]]]]] = []
        self.lock = threading.Lock()

    # the `ShardAuth` duck type StreamPolicy holds
    def metadata(self) -> list[tuple[str, str]]:
        return []

    def channel(self, target: str, options=()) -> FakeChannel:
        with self.lock:
            plan = self.script.pop(0) if self.script else "serve"
        if plan == "raise":
            raise OSError("unreadable certificate")
        return FakeChannel(self, plan)

    def taken(self) -> list[tuple[str, int, bool, bool]]:
        with self.lock:
            return [r for call in self.calls for _, recs in call for r in recs]


class FakeChannel:
    def __init__(self, shard: FakeShard, plan) -> None:
        self.shard, self.plan = shard, plan

    def __enter__(self) -> FakeChannel:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def stream_stream(self, method: str, request_serializer=None, response_deserializer=None, **kw):
        assert method == DELIVER
        return self.deliver

    def deliver(self, requests: Iterator[ingest_pb2.DeliveryBatch], metadata=()) -> FakeCall:
        wire: list = []
        with self.shard.lock:
            self.shard.calls.append(wire)
        return FakeCall(requests, self.plan, self.shard.window, wire, self.shard.lock)


class FakeCall:
    """The response iterator of one Deliver call; taking a batch happens inside `next`."""

    def __init__(self, requests, plan, window: int, wire: list, lock: threading.Lock) -> None:
        self.requests, self.plan, self.window, self.wire, self.lock = requests, plan, window, wire, lock
        self.granted = False
        self.cancelled = threading.Event()

    def __iter__(self) -> FakeCall:
        return self

    def cancel(self) -> None:
        self.cancelled.set()

    def __next__(self) -> ingest_pb2.IngestAck:
        if self.plan == "refuse":
            raise Broken()
        if not self.granted:
            self.granted = True
            return ingest_pb2.IngestAck(acked_seq=0, window=self.window, shard_id="A")
        kind, n = self.plan if isinstance(self.plan, tuple) else (self.plan, 0)
        if kind == "hold" and len(self.wire) >= n:
            self.cancelled.wait(30)
            raise Broken(grpc.StatusCode.CANCELLED)
        try:
            batch = next(self.requests)
        except StopIteration:  # the sender stopped: what gRPC reports after cancel()
            raise Broken(grpc.StatusCode.CANCELLED) from None
        with self.lock:
            self.wire.append((batch.seq, [(r.token, r.offset, r.resync, r.gap) for r in batch.records]))
        if kind == "break" and len(self.wire) >= n:
            raise Broken()
        if kind == "hold":
            return self.__next__()
        return ingest_pb2.IngestAck(acked_seq=batch.seq, shard_id="A")


class RecordingBackoff(Backoff):
    """The real backoff (seeded), recording every delay it hands out."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.delays: list[float] = []
        self.resets = 0

    def next_delay_s(self) -> float:
        d = super().next_delay_s()
        self.delays.append(d)
        return d

    def reset(self) -> None:
        self.resets += 1
        super().reset()


def policy(shard: FakeShard, max_batch_records: int = 2) -> StreamPolicy:
    """No stream pings during a test (60 s): every batch on the wire carries records."""
    return StreamPolicy(max_batch_records=max_batch_records, backoff_cap_s=0.004, keepalive_s=10,
                        keepalive_timeout_s=5, ping_s=60, auth=shard)


def info(started_ms: int = 1, addr: str = "127.0.0.1:9") -> ShardInfo:
    return ShardInfo("A", addr, "ws://a", started_ms, 0, 0, 0)


def recs(*offsets: int, token: str = "T") -> list[Record]:
    return [Record(token, b"{}", 0, o) for o in offsets]


def sender_with(script: list, records: list[Record], seed: int = 7) -> tuple[ShardSender, FakeShard]:
    shard = FakeShard(script)
    queue = ShardQueue(100)
    queue.offer(records)
    sender = ShardSender(info(), queue, policy(shard))
    sender.backoff = RecordingBackoff(base_s=0.001, cap_s=0.004, rng=random.Random(seed))
    return sender, shard


def stopped(sender: ShardSender) -> None:
    sender.stop()
    sender.join(10)
    assert not sender._thread.is_alive()


def test_a_broken_stream_is_reopened_and_its_unacked_batch_resent_first_in_order():
    """The batch in flight when a stream breaks goes out again, first and whole, on the next stream;
    acked ones never do: stream_failures 1, connects 2, resent exactly that batch's 2 records."""
    sender, shard = sender_with([("break", 2)], recs(1, 2, 3, 4, 5))
    sender.start()
    until(lambda: len(shard.taken()) == 7 and sender.queue.in_flight == 0, what="all acked")
    stopped(sender)
    t = lambda *offs: [("T", o, False, False) for o in offs]  # noqa: E731
    assert shard.calls == [[(1, t(1, 2)), (2, t(3, 4))],  # the second batch broke the stream unacked
                           [(1, t(3, 4)), (2, t(5))]]  # resent first, then the rest; seq restarts at 1
    q = sender.queue
    assert (sender.stream_failures, sender.connects) == (1, 2)
    assert (q.resent_records, q.sent_records, q.dropped, q.depth) == (2, 7, 0, 0)
    assert sender.backoff.resets == 2 and len(sender.backoff.delays) >= 1


def test_reconnects_back_off_exponentially_with_jitter_and_start_over_after_a_ready_stream():
    """Four refused dials wait draws in [b/2, b] for b = 1, 2, 4 and 4 ms (capped); the stream that comes
    up resets the backoff, so the failure after it draws from [0.5, 1] ms again."""
    sender, shard = sender_with(["refuse"] * 4 + [("break", 1)], recs(1))
    sender.start()
    until(lambda: len(shard.taken()) == 2 and sender.queue.in_flight == 0, what="the sixth stream's ack")
    stopped(sender)
    rng = random.Random(7)
    expected = [rng.uniform(b / 2000, b / 1000) for b in (1, 2, 4, 4, 1)]
    assert sender.backoff.delays[:5] == expected
    assert (sender.stream_failures, sender.connects, sender.queue.resent_records) == (5, 2, 1)
    assert [len(c) for c in shard.calls] == [0, 0, 0, 0, 1, 1]  # the record: broken once, then acked


def test_a_dial_that_raises_is_a_counted_failure_and_the_sender_keeps_trying():
    """An error outside gRPC (an unreadable certificate) never ends the sender: counted, retried."""
    sender, shard = sender_with(["raise", "raise"], recs(1))
    sender.start()
    until(lambda: shard.taken() == [("T", 1, False, False)] and sender.queue.in_flight == 0,
          what="delivered after two failed dials")
    stopped(sender)
    assert (sender.stream_failures, sender.connects, sender.queue.resent_records) == (2, 1, 0)


def test_stopping_a_sender_is_not_a_stream_failure():
    """stop() cancels the open stream; that cancellation is not counted as the stream breaking."""
    sender, _ = sender_with([("hold", 1)], recs(1, 2, 3))
    sender.start()
    until(lambda: sender.queue.in_flight == 1, what="one batch in flight")
    stopped(sender)
    assert (sender.stream_failures, sender.connects) == (0, 1)
    assert sender.queue.dropped == 3  # the unacked batch (2) and the queued record (1): gone with it


def streams_with(shard: FakeShard, latest: dict[str, Record], tokens: list[str]) -> ShardStreams:
    """Streams whose liveness window is 0: a shard missing from the registry is never proven alive."""
    return ShardStreams(100, policy(shard), liveness_s=0.0, latest=latest.get, tokens_of=lambda sid: tokens)


def test_records_for_a_shard_that_is_gone_are_counted_dropped_gone_exactly():
    """A shard leaving the registry with 1 batch (2 records) unacked and 3 queued: its stream stops
    and all 5 are counted in dropped_gone; records offered to a shard without a stream count too."""
    shard = FakeShard([("hold", 1)])
    streams = streams_with(shard, {}, [])
    streams.reconcile({"A": info()})
    assert streams.routable == {"A"}
    streams.offer({"A": recs(1, 2, 3, 4, 5)})
    sender = streams.senders["A"]
    until(lambda: sender.queue.in_flight == 1 and sender.queue.depth == 3, what="a batch held unacked")
    streams.offer({"B": recs(6, 7)})  # no stream to B (the router never does this; counted if it did)
    assert streams.dropped_gone == 2
    streams.reconcile({})
    sender.join(10)
    assert (streams.dropped_gone, streams.routable, streams.stats()) == (7, frozenset(), {})
    assert not sender._thread.is_alive() and sender.stream_failures == 0
    assert shard.calls == [[(1, [("T", 1, False, False), ("T", 2, False, False)])]]


def test_a_shard_counted_dead_that_returns_as_the_same_process_gets_resyncs_first():
    """Back with the same start time: each routed token with a known latest value goes out first as a
    resync (T3 has none: skipped); back as a new process (another start time): nothing is resynced."""
    shard = FakeShard([("hold", 1)])
    latest = {"T1": Record("T1", b"1", 0, 41), "T2": Record("T2", b"2", 0, 42)}
    streams = streams_with(shard, latest, ["T1", "T2", "T3"])
    streams.reconcile({"A": info(started_ms=5)})
    streams.offer({"A": recs(1)})
    until(lambda: streams.senders["A"].queue.in_flight == 1, what="the record in flight")
    streams.reconcile({})
    assert streams.dropped_gone == 1
    streams.reconcile({"A": info(started_ms=5)})
    until(lambda: len(shard.calls) == 2 and shard.calls[1], what="the returning shard's first batch")
    assert shard.calls[1][0] == (1, [("T1", 41, True, False), ("T2", 42, True, False)])
    assert streams.resynced_returns == 1 and streams.senders["A"].queue.resyncs == 2
    streams.reconcile({})
    streams.reconcile({"A": info(started_ms=6)})  # a restarted process: its clients reconnected anyway
    assert streams.resynced_returns == 1 and streams.senders["A"].queue._lost == {}
    streams.stop_all()


class FakeTime:
    """`time` as dispatcher.consumer sees it: a wall clock the test sets."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def time(self) -> float:
        return self.now_s

    def process_time(self) -> float:
        return 0.0

    def monotonic(self) -> float:
        return self.now_s

    def perf_counter(self) -> float:
        return self.now_s


def loop_at(now_s: float, monkeypatch) -> ConsumerLoop:
    monkeypatch.setattr(consumer_mod, "time", FakeTime(now_s))
    return ConsumerLoop(dispatcher_args(["--last-values-max", "100"]), sync=None, router=None, streams=None)


def kafka_record(key: bytes | None, offset: int, ts_ms: int, value: bytes | None = b"{}", partition=0):
    return SimpleNamespace(key=key, value=value, partition=partition, offset=offset, timestamp=ts_ms)


def test_records_without_a_usable_key_are_counted_invalid_and_go_nowhere(monkeypatch):
    """Keyless (None), empty, too long, non-token and non-ASCII keys: counted invalid, neither consumed,
    routed, timed nor kept as a last value; a null value with a good key becomes an empty payload."""
    loop = loop_at(1000.0, monkeypatch)
    bad = [None, b"", b"k" * 65, b"bad key!", b"\xff"]
    polled = {0: [kafka_record(k, i, 999_000) for i, k in enumerate(bad)]
              + [kafka_record(b"GOOD", 5, 999_000), kafka_record(b"NULL", 6, 999_000, value=None)]}
    out = loop._translate(polled)
    assert out == [Record("GOOD", b"{}", 0, 5, 999_000), Record("NULL", b"", 0, 6, 999_000)]
    assert (loop.records_invalid, loop.records_consumed, len(loop.last)) == (5, 2, 2)
    assert loop.consume_latency.count == 2  # only the two good records were timed


def test_consume_latency_lands_in_the_bucket_of_each_records_age(monkeypatch):
    """Age = poll time − Kafka timestamp: 1 ms, 1 s and 10 s fall in their own (le) buckets, 30 s
    in +Inf, a timestamp from the future (skewed producer clock) in the first; the sum is exact."""
    loop = loop_at(1000.0, monkeypatch)
    ages_ms = [1, 1000, 10_000, 30_000, -2000]
    loop._translate({0: [kafka_record(b"T", i, 1_000_000 - a) for i, a in enumerate(ages_ms)]})
    counts = loop.consume_latency.counts
    idx = {b: i for i, b in enumerate(LATENCY_BUCKETS_S)}
    expected = [0] * (len(LATENCY_BUCKETS_S) + 1)
    for i in (idx[0.001], idx[1.0], idx[10.0], len(LATENCY_BUCKETS_S), 0):
        expected[i] += 1
    assert counts == expected
    assert loop.consume_latency.sum == pytest.approx(sum(ages_ms) / 1000, abs=1e-9)


class FakeConsumer:
    """The KafkaConsumer seam of `commit`: two assigned partitions at positions 10 and 20."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[dict, int | None]] = []
        self.tps = {TopicPartition("t", 0), TopicPartition("t", 1)}

    def assignment(self):
        return self.tps

    def position(self, tp, timeout_ms=None) -> int:
        return {0: 10, 1: 20}[tp.partition]

    def commit(self, offsets, timeout_ms=None) -> None:
        self.calls.append((offsets, timeout_ms))
        if self.error is not None:
            raise self.error


def committing(consumer: FakeConsumer, pending: dict[int, int]) -> ConsumerLoop:
    loop = ConsumerLoop(dispatcher_args(["--last-values-max", "10"]), sync=None, router=None,
                        streams=SimpleNamespace(pending_offsets=lambda: pending))
    loop.consumer = consumer
    return loop


def test_a_commit_stays_below_unacked_records_and_is_bounded_in_time():
    """Partition 0 commits at its oldest unacked offset (7), partition 1 at its position (20), and
    the call carries a finite timeout: a broker outage cannot hold the poll loop in commit()."""
    consumer = FakeConsumer()
    loop = committing(consumer, {0: 7})
    loop.commit()
    offsets, timeout_ms = consumer.calls[0]
    assert {tp.partition: o.offset for tp, o in offsets.items()} == {0: 7, 1: 20}
    assert all(isinstance(o, OffsetAndMetadata) for o in offsets.values())
    assert timeout_ms == COMMIT_TIMEOUT_MS and 0 < COMMIT_TIMEOUT_MS <= 5000
    assert (loop.commits, loop.commit_failures) == (1, 0)


def test_a_failed_commit_is_counted_and_the_loop_carries_on():
    """A commit that times out (the broker is gone) counts one failure, no commit, and raises nothing."""
    loop = committing(FakeConsumer(KafkaTimeoutError()), {})
    loop.commit()
    loop.commit()
    assert (loop.commits, loop.commit_failures) == (0, 2)
