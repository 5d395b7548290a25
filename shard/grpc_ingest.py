"""gRPC adapter for the ingest stream: protobuf in, `Record`s to the core, acks out.

The only shard module that imports generated code.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from shardcast.v1 import ingest_pb2, ingest_pb2_grpc

from common.grpc_auth import deny
from common.records import Record
from shard.ingest import IngestCore

log = logging.getLogger(__name__)
SHARD_ID_METADATA = "x-shardcast-shard-id"
AUTH_METADATA = "authorization"  # value: "Bearer <ingest secret>"


class IngestServicer(ingest_pb2_grpc.ShardIngestServicer):
    """Serves `ShardIngest.Deliver`: one call per connected dispatcher."""

    def __init__(self, shard_id: str, core: IngestCore, window: int, counters: dict[str, int]) -> None:
        self.shard_id = shard_id
        self.core = core
        self.window = window
        self.counters = counters

    def Deliver(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[ingest_pb2.DeliveryBatch], context: grpc.ServicerContext
    ) -> Iterator[ingest_pb2.IngestAck]:
        expected = dict(context.invocation_metadata()).get(SHARD_ID_METADATA)
        if expected and expected != self.shard_id:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is shard {self.shard_id!r}, not {expected!r}",
            )
        self.counters["ingest_streams"] += 1
        log.info("ingest stream opened peer=%s", context.peer())
        try:
            yield ingest_pb2.IngestAck(acked_seq=0, window=self.window, shard_id=self.shard_id)
            for batch in request_iterator:
                if not batch.records:  # the dispatcher's stream ping: ack only
                    self.counters["stream_pings"] += 1
                else:
                    self.counters["batches_received"] += 1
                    self.core.handle(
                        Record(r.token, r.payload, r.partition, r.offset, r.produce_ts_ms,
                               r.snapshot, r.resync, r.gap)
                        for r in batch.records
                    )
                yield ingest_pb2.IngestAck(acked_seq=batch.seq, shard_id=self.shard_id)
        finally:
            self.counters["ingest_streams"] -= 1
            log.info("ingest stream closed peer=%s", context.peer())


def add_to_server(servicer: IngestServicer, server: grpc.Server) -> None:
    """Register the servicer (keeps generated code out of the wiring module)."""
    ingest_pb2_grpc.add_ShardIngestServicer_to_server(servicer, server)


class IngestSecretAuth(grpc.ServerInterceptor):
    """Every call on the shard's gRPC port (ingest and control alike) must carry the ingest secret.

    Checked before any servicer runs, so an unauthenticated Deliver never
    reaches the hub and an unauthenticated Drain never starts; the comparison
    is constant-time so the secret cannot be guessed byte by byte.
    """

    def __init__(self, secret: str, on_reject: Callable[[], None] = lambda: None) -> None:
        self.expected = f"Bearer {secret}".encode()
        self.on_reject = on_reject
        self.refused = 0

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        got = dict(handler_call_details.invocation_metadata).get(AUTH_METADATA, "")
        if hmac.compare_digest(got.encode(), self.expected):
            return handler
        self.on_reject()
        self.refused += 1
        if self.refused <= 10 or self.refused % 1000 == 0:  # a flood must not flood the log too
            log.warning("refused %s: missing or wrong ingest secret (%d refused so far)",
                        handler_call_details.method[:100], self.refused)
        return deny(handler, "missing or wrong ingest secret")


def bind(server: grpc.Server, addr: str, cert: str, key: str, client_ca: str) -> int:
    """Listen on `addr`: plaintext, TLS with `cert`/`key`, or mutual TLS when `client_ca` is set."""
    if not cert:
        return server.add_insecure_port(addr)
    ca = Path(client_ca).read_bytes() if client_ca else None
    creds = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                        root_certificates=ca, require_client_auth=ca is not None)
    return server.add_secure_port(addr, creds)
