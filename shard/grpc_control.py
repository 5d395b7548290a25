"""gRPC adapter for `ShardControl`: the drain and undrain a dispatcher's admin API asks for.

One of the two shard modules that import generated code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc
from shardcast.v1 import control_pb2, control_pb2_grpc

from common.drain import check_window
from shard.drain import Drain

PROGRESS_PERIOD_S = 0.2
log = logging.getLogger(__name__)


class ControlServicer(control_pb2_grpc.ShardControlServicer):
    """`Drain` starts (or joins) the shard's drain and streams its progress until done;
    `Undrain` ends it.

    Callers are authenticated before this runs (`grpc_ingest.IngestSecretAuth`, mutual TLS):
    a drain closes every client, so it needs the same secret as ingest.
    """

    def __init__(self, shard_id: str, start_drain: Callable[[float], Drain],
                 connections: Callable[[], int],
                 undrain: Callable[[], bool] = lambda: False) -> None:
        self.shard_id = shard_id
        self.start_drain = start_drain
        self.connections = connections
        self.undrain = undrain

    def Drain(  # noqa: N802 (gRPC method name)
        self, request: control_pb2.DrainRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.DrainStatus]:
        problem = check_window(request.window_s)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        status = self.start_drain(request.window_s).status
        while context.is_active():
            done = status.done  # read once: the message sent and the loop's exit must agree
            yield control_pb2.DrainStatus(
                shard_id=self.shard_id, connections=self.connections(), closed=status.closed,
                deregistered=status.out_of_routing, done=done,
            )
            if done:
                return
            if status.cancelled:
                context.abort(grpc.StatusCode.ABORTED, "drain cancelled by an undrain")
            time.sleep(PROGRESS_PERIOD_S)
        log.warning("drain status stream ended before the drain did (caller gone)")

    def Undrain(  # noqa: N802 (gRPC method name)
        self, request: control_pb2.UndrainRequest, context: grpc.ServicerContext
    ) -> control_pb2.UndrainResponse:
        was_draining = self.undrain()
        log.info("undrain requested was_draining=%s", was_draining)
        return control_pb2.UndrainResponse(shard_id=self.shard_id, was_draining=was_draining,
                                           connections=self.connections())


def add_to_server(servicer: ControlServicer, server: grpc.Server) -> None:
    """Register the servicer (keeps generated code out of the wiring module)."""
    control_pb2_grpc.add_ShardControlServicer_to_server(servicer, server)
