"""gRPC adapter for shard streams: one sender thread per live shard.

With `admin_grpc` (and the admin CLI) the only dispatcher modules that import
generated code: `Record`s become protobuf here and nowhere else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from shardcast.v1 import ingest_pb2, ingest_pb2_grpc

from common.backoff import Backoff
from common.registry import ShardInfo
from dispatcher.shard_queue import ShardQueue

log = logging.getLogger(__name__)
SHARD_ID_METADATA = "x-shardcast-shard-id"
MAX_BATCH_BYTES = 4 << 20  # payload bytes per DeliveryBatch (shards accept messages up to 64 MiB)
AUTH_METADATA = "authorization"  # value: "Bearer <ingest secret>", checked by the shard on every call


@dataclass(frozen=True)
class ShardAuth:
    """How the dispatcher proves itself to shards: the ingest secret, and optionally (mutual) TLS.

    Shared by the ingest streams and the drain calls, since the shard checks
    both the same way. Certificate files are read at each dial, so a rotated
    certificate is picked up on the next reconnect.
    """

    secret: str = field(default="", repr=False)
    tls_ca: str = ""  # set: dial with TLS, verifying shards against this CA
    tls_cert: str = ""  # set: present this client certificate (mutual TLS)
    tls_key: str = ""

    def metadata(self) -> list[tuple[str, str]]:
        return [(AUTH_METADATA, f"Bearer {self.secret}")] if self.secret else []

    def channel(self, target: str, options: Sequence[tuple[str, int]] = ()) -> grpc.Channel:
        if not self.tls_ca:
            return grpc.insecure_channel(target, options=list(options))
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(self.tls_ca).read_bytes(),
            private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None,
        )
        return grpc.secure_channel(target, creds, options=list(options))


@dataclass(frozen=True)
class StreamPolicy:
    """How a sender talks to shards; both ends' keepalive settings must agree (see shard config)."""

    max_batch_records: int
    backoff_cap_s: float
    keepalive_s: float  # HTTP/2 ping period: shards must permit it (--grpc-min-ping-interval-s)
    keepalive_timeout_s: float
    ping_s: float  # an idle stream carries an empty batch this often; its ack is proof of life
    auth: ShardAuth = field(default_factory=ShardAuth)

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            # Any ping, not only keepalive's: while another ping (gRPC's own BDP probe, sent as data
            # flows) waits for its ack, no keepalive ping is sent, and that one's own timeout is
            # 60 s by default — a shard that froze mid-stream went unnoticed for a minute.
            ("grpc.http2.ping_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]


class ShardSender:
    """Keeps one Deliver stream open to a shard and feeds it from the shard's queue.

    Reconnects with capped, jittered backoff; while disconnected the queue keeps
    absorbing (and, past its bound, dropping) records, so nothing upstream waits.
    Unacked batches of a stream that dies are resent on the next one.
    """

    def __init__(self, info: ShardInfo, queue: ShardQueue, policy: StreamPolicy) -> None:
        self.info = info
        self.queue = queue
        self.policy = policy
        self.max_batch_records = policy.max_batch_records
        self.backoff = Backoff(base_s=0.05, cap_s=policy.backoff_cap_s)
        self.state = "connecting"
        self.connects = 0
        self.stream_failures = 0
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"sender-{info.shard_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close the queue and cancel the stream without waiting (the Kafka thread calls this)."""
        self._stop.set()
        self.queue.close()
        call = self._call
        if call is not None:
            call.cancel()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stream_once()
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                code = exc.code() if hasattr(exc, "code") else None
                self.stream_failures += 1
                log.warning("stream to %s failed: %s", self.info.shard_id, code)
            except Exception:  # e.g. an unreadable certificate: retry, never end the sender
                self.stream_failures += 1
                log.exception("stream to %s failed", self.info.shard_id)
            finally:
                requeued = self.queue.close_stream()
                if requeued:
                    log.info("stream to %s closed, %d unacked records will be resent",
                             self.info.shard_id, requeued)
            self.state = "backoff"
            self._stop.wait(self.backoff.next_delay_s())

    def _stream_once(self) -> None:
        self.state = "connecting"
        with self.policy.auth.channel(self.info.grpc_addr, self.policy.channel_options()) as channel:
            stub = ingest_pb2_grpc.ShardIngestStub(channel)
            alive = threading.Event()
            alive.set()
            metadata = [(SHARD_ID_METADATA, self.info.shard_id), *self.policy.auth.metadata()]
            call = stub.Deliver(self._batches(alive), metadata=metadata)
            self._call = call
            try:
                for ack in call:
                    if ack.window:
                        self.queue.open_stream(ack.window)
                        self.state = "ready"
                        self.connects += 1
                        self.backoff.reset()
                        log.info("stream to %s ready window=%d", self.info.shard_id, ack.window)
                    else:
                        self.queue.ack(ack.acked_seq)
            finally:
                alive.clear()
                self._call = None

    def proven_alive(self, now_s: float, within_s: float) -> bool:
        """The shard acked on an open stream within `within_s`: alive, whatever the registry says."""
        return self.state == "ready" and now_s - self.queue.last_ack_s < within_s

    def _batches(self, alive: threading.Event) -> Iterator[ingest_pb2.DeliveryBatch]:
        """Request stream: batches as the queue yields them, and a ping when idle, until the call ends."""
        queue = self.queue
        epoch = queue.epoch
        ping_s = self.policy.ping_s
        last_sent = time.monotonic()
        while alive.is_set() and not self._stop.is_set() and epoch == queue.epoch:
            got = queue.take(self.max_batch_records, timeout_s=min(0.25, ping_s), epoch=epoch,
                             max_bytes=MAX_BATCH_BYTES)
            now = time.monotonic()
            if got is None:
                seq = queue.ping(epoch) if now - last_sent >= ping_s else None
                if seq is None:
                    continue
                got = (seq, [])
            last_sent = now
            seq, records = got
            yield ingest_pb2.DeliveryBatch(
                seq=seq,
                sent_ts_ms=int(time.time() * 1000),
                records=[
                    ingest_pb2.Record(
                        token=r.token,
                        payload=r.payload,
                        partition=r.partition,
                        offset=r.offset,
                        produce_ts_ms=r.produce_ts_ms,
                        snapshot=r.snapshot,
                        resync=r.resync,
                        gap=r.gap,
                    )
                    for r in records
                ],
            )
