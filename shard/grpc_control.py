"""gRPC adapter for `ShardControl`: the drain a dispatcher's admin API asks for.

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
    """`Drain` starts (or joins) the shard's drain and streams its progress until done.

    Callers are authenticated before this runs (`grpc_ingest.IngestSecretAuth`, mutual TLS):
    a drain closes every client, so it needs the same secret as ingest.
    """

    def __init__(self, shard_id: str, start_drain: Callable[[float], Drain],
                 connections: Callable[[], int]) -> None:
        self.shard_id = shard_id
        self.start_drain = start_drain
        self.connections = connections

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
                deregistered=status.deregistered, done=done,
            )
            if done:
                return
            time.sleep(PROGRESS_PERIOD_S)
        log.warning("drain status stream ended before the drain did (caller gone)")


def add_to_server(servicer: ControlServicer, server: grpc.Server) -> None:
    """Register the servicer (keeps generated code out of the wiring module)."""
    control_pb2_grpc.add_ShardControlServicer_to_server(servicer, server)
