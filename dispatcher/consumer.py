"""The Kafka side of the dispatcher: poll, route, hand on, then commit.

A partition's committed offset never passes a record some shard has not
acked yet (nor one still waiting in a shard queue), periodically and on
partition revocation: a dispatcher that dies, or loses its partitions, hands
over at a position from which nothing handed on can be missing. What is
replayed from there reaches shards twice and their position check drops it.

Group timing (`--kafka-session-timeout-s`, `--kafka-heartbeat-s`) decides how
fast a dead dispatcher's partitions move: the broker notices after the session
timeout (its floor, `group.min.session.timeout.ms`, is 6 s by default), the
survivors learn of the rebalance at their next heartbeat. kafka-python speaks
only the eager rebalance protocol, so every rebalance also pauses the
survivors' own partitions for about one heartbeat plus a join round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata
from kafka.errors import KafkaError

from common.backoff import Backoff
from common.metrics import FastHistogram
from common.records import TOKEN_RE, Record
from dispatcher.config import DispatcherConfig
from dispatcher.fetch_pacing import FetchPacer, FetchSettings
from dispatcher.last_values import LastValues
from dispatcher.registry_sync import RegistrySync
from dispatcher.routing import Router
from dispatcher.streams import ShardStreams

log = logging.getLogger(__name__)
# Longest a commit may wait for the group coordinator. Without a timeout kafka-python's commit()
# retries until the broker answers: a broker outage held the poll loop there (no shard reconciled,
# SIGTERM unanswered) and never counted a failure. A failed commit is simply retried next period.
COMMIT_TIMEOUT_MS = 2000


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked) -> None:
        self.loop.commit()

    def on_partitions_assigned(self, assigned) -> None:
        """Forget last values of partitions now owned elsewhere (kept across an eager
        rebalance that hands the same partitions back: they are resync sources)."""
        mine = {tp.partition for tp in assigned}
        self.loop.last.retain_partitions(mine)
        log.info("assigned partitions %s", sorted(mine))


class ConsumerLoop:
    """Runs in the main thread until `stop()`."""

    def __init__(self, cfg: DispatcherConfig, sync: RegistrySync, router: Router,
                 streams: ShardStreams) -> None:
        self.cfg = cfg
        self.sync = sync
        self.router = router
        self.streams = streams
        self.consumer: KafkaConsumer | None = None
        self.records_consumed = 0
        self.records_invalid = 0
        self.commits = 0
        self.commit_failures = 0

        self.polls = 0
        self.pacer = FetchPacer(cfg.kafka_fetch_linger_ms, cfg.kafka_fetch_batch_bytes,
                                cfg.kafka_fetch_wait_ms)
        self._pacing_unsupported = False
        # Newest record of each token this dispatcher consumes (bounded): the snapshot a
        # shard gets when it joins a token's route, and the value of a resync. Written here only.
        self.last = LastValues(cfg.last_values_max)
        # partition → (position, high watermark), refreshed by this thread about once a second.
        self.lag: dict[int, tuple[int, int]] = {}
        # (wall clock, process CPU) when the first record arrived: throughput runs time from here.
        self.first_record_at: tuple[float, float] | None = None
        # Kafka record timestamp → polled here: the Kafka hop of the end-to-end latency.
        self.consume_latency = FastHistogram()
        # Called with the seconds each poll's routing and hand-off took (the metrics hook).
        self.route_timer: Callable[[float], None] = lambda seconds: None
        self._stop = threading.Event()

    @property
    def assigned(self) -> bool:
        c = self.consumer
        return c is not None and bool(c.assignment())

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        backoff = Backoff(base_s=0.2, cap_s=self.cfg.backoff_cap_s)
        while not self._stop.is_set():
            try:
                self.consumer = self._connect()
                backoff.reset()
                self._poll_loop()
            except KafkaError as exc:
                log.warning("kafka error, reconnecting: %s", exc)
                self._stop.wait(backoff.next_delay_s())
            finally:
                self._close()

    def _connect(self) -> KafkaConsumer:
        cfg = self.cfg
        idle = self.pacer.reset()  # a new consumer answers at the first record (fetch_pacing.py)
        consumer = KafkaConsumer(
            bootstrap_servers=cfg.kafka_bootstrap.split(","),
            group_id=cfg.group,
            client_id=f"shardcast-dispatcher-{cfg.dispatcher_id}",
            enable_auto_commit=False,
            auto_offset_reset=cfg.offset_reset,
            max_poll_records=cfg.max_poll_records,
            metrics_enabled=False,  # kafka-python's own sensors: 7-10 % of poll's Python time, unread
            fetch_min_bytes=idle.min_bytes,
            fetch_max_wait_ms=idle.max_wait_ms,
            # kafka-python's default frame cap (1,000,000 bytes) is below its own
            # default partition fetch size (1 MiB): a full fetch would fail forever.
            max_partition_fetch_bytes=1 << 20,
            fetch_max_bytes=16 << 20,
            receive_message_max_bytes=(16 << 20) + (1 << 20),
            reconnect_backoff_max_ms=int(cfg.kafka_reconnect_backoff_max_s * 1000),
            session_timeout_ms=int(cfg.kafka_session_timeout_s * 1000),
            heartbeat_interval_ms=int(cfg.kafka_heartbeat_s * 1000),
        )
        consumer.subscribe(topics=[cfg.topic], listener=_CommitOnRevoke(self))
        log.info("consuming topic=%s group=%s", cfg.topic, cfg.group)
        return consumer

    def _poll_loop(self) -> None:
        assert self.consumer is not None
        next_commit = time.monotonic() + self.cfg.commit_interval_s
        while not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=100, max_records=self.cfg.max_poll_records)
            self.polls += 1
            self.streams.reconcile(self.sync.live)
            records = self._translate(polled)
            pace = self.pacer.after_poll(bool(polled), time.monotonic())
            if pace is not None:
                self._apply_fetch(pace)
            if records:
                t0 = time.perf_counter()
                plan = self.router.route(records, self.streams.routable)
                self.streams.offer(plan)
                self.route_timer(time.perf_counter() - t0)
            if time.monotonic() >= next_commit:
                self.commit()
                self._measure_lag()
                next_commit = time.monotonic() + self.cfg.commit_interval_s

    def _apply_fetch(self, settings: FetchSettings) -> None:
        """Make the consumer's next fetches use `settings` (see dispatcher/fetch_pacing.py).

        kafka-python reads these two values from its fetcher's config for every
        fetch request it builds, but has no public setter: the pinned version is
        checked by tests/integration/test_fetch_pacing.py. Should a later one
        lack the attribute, the consumer keeps its start-up settings (idle),
        which is correct, only costlier, and logged once.
        """
        conf = getattr(getattr(self.consumer, "_fetcher", None), "config", None)
        if not isinstance(conf, dict) or not {"fetch_min_bytes", "fetch_max_wait_ms"} <= conf.keys():
            if not self._pacing_unsupported:
                self._pacing_unsupported = True
                log.warning("this kafka-python has no fetcher config to pace fetches with")
            return
        conf["fetch_min_bytes"] = settings.min_bytes
        conf["fetch_max_wait_ms"] = settings.max_wait_ms

    def _translate(self, polled) -> list[Record]:
        """ConsumerRecords → Records; a record whose key is not a valid token is counted and skipped."""
        out: list[Record] = []
        put = self.last.put
        now_ms = time.time() * 1000
        observe = self.consume_latency.observe
        for tp_records in polled.values():
            for cr in tp_records:
                token = _token(cr.key)
                if token is None:
                    self.records_invalid += 1
                    continue
                rec = Record(token, cr.value or b"", cr.partition, cr.offset, cr.timestamp)
                out.append(rec)
                put(rec)
                observe((now_ms - cr.timestamp) / 1000)
        if out and self.first_record_at is None:
            self.first_record_at = (time.time(), time.process_time())
        self.records_consumed += len(out)
        return out

    def _measure_lag(self) -> None:
        """Position and high watermark of each assigned partition (this thread owns the consumer)."""
        c = self.consumer
        if c is None:
            return
        lag: dict[int, tuple[int, int]] = {}
        for tp in c.assignment():
            high = c.highwater(tp)
            try:
                pos = c.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if high is not None and pos is not None:
                lag[tp.partition] = (pos, high)
        self.lag = lag

    def commit(self) -> None:
        """Commit, per partition, what every shard has acked of what was polled so far."""
        c = self.consumer
        if c is None or not c.assignment():
            return
        pending = self.streams.pending_offsets()
        try:
            offsets = {}
            for tp in c.assignment():
                nxt = c.position(tp, timeout_ms=1000)  # every record before it was handed on
                if nxt is not None:
                    offsets[tp] = OffsetAndMetadata(min(nxt, pending.get(tp.partition, nxt)), "", -1)
            c.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
            self.commits += 1
        except KafkaError as exc:
            self.commit_failures += 1
            log.warning("offset commit failed: %s", exc)

    def _close(self) -> None:
        """Final commit of everything handed on, then leave the group."""
        self.commit()
        c, self.consumer = self.consumer, None
        if c is not None:
            c.close(autocommit=False)


def _token(key: bytes | None) -> str | None:
    """The record's key as a token, or None when it is not one (the same rule clients follow).

    Keys come from any producer: an empty, 10 KB, newline or `*` key must not
    become a routing key, a registry entry or a last value.
    """
    if key is None or len(key) > 64:
        return None
    try:
        token = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    return token if TOKEN_RE.fullmatch(token) else None
