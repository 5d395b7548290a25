"""One queue and sender per live shard, reconciled with the registry's live set."""

from __future__ import annotations

import dataclasses
import logging

from common.records import Record
from common.registry import ShardInfo
from dispatcher.grpc_out import ShardSender
from dispatcher.shard_queue import ShardQueue

log = logging.getLogger(__name__)


class ShardStreams:
    """Starts a sender for each shard that appears, stops it when the shard dies."""

    def __init__(self, queue_records: int, max_batch_records: int, backoff_cap_s: float) -> None:
        self.queue_records = queue_records
        self.max_batch_records = max_batch_records
        self.backoff_cap_s = backoff_cap_s
        self.senders: dict[str, ShardSender] = {}
        # Records lost to shards no longer streamed: routed to a shard without a
        # sender, plus every drop of a sender's queue once that sender is stopped
        # (its own per-shard stats disappear with it).
        self.dropped_gone = 0
        self._seen: dict[str, ShardInfo] | None = None

    def reconcile(self, live: dict[str, ShardInfo]) -> None:
        """Match senders to `live` (a dict replaced, never mutated, by the registry sync)."""
        if live is self._seen:
            return
        self._seen = live
        for sid, sender in list(self.senders.items()):
            info = live.get(sid)
            if info is None or _restarted(sender.info, info):
                log.info("stopping stream to %s (%s)", sid, "gone" if info is None else "moved")
                self._stop(sid)
        for sid, info in live.items():
            if sid not in self.senders:
                sender = ShardSender(info, ShardQueue(self.queue_records),
                                     self.max_batch_records, self.backoff_cap_s)
                self.senders[sid] = sender
                sender.start()

    def offer(self, plan: dict[str, list[Record]]) -> None:
        """Hand each shard its records; never blocks (full queues drop their oldest)."""
        for sid, records in plan.items():
            sender = self.senders.get(sid)
            if sender is None:
                self.dropped_gone += len(records)
            else:
                sender.queue.offer(records)

    def offer_snapshot(self, sid: str, record: Record) -> bool:
        """Queue a token's last value for a shard that just joined its route (any thread)."""
        sender = self.senders.get(sid)
        if sender is None:
            return False
        sender.queue.offer([dataclasses.replace(record, snapshot=True)])
        return True

    def _stop(self, sid: str) -> None:
        sender = self.senders.pop(sid)
        sender.stop()
        self.dropped_gone += sender.queue.dropped

    def stop_all(self) -> None:
        """Shutdown: stop every sender, then give their threads a moment to finish."""
        senders = list(self.senders.values())
        for sid in list(self.senders):
            self._stop(sid)
        for sender in senders:
            sender.join(2.0)

    def stats(self) -> dict[str, dict[str, object]]:
        return {
            sid: {
                "state": s.state,
                "grpc": s.info.grpc_addr,
                "queue_depth": s.queue.depth,
                "in_flight_batches": s.queue.in_flight,
                "records_offered": s.queue.offered,
                "records_sent": s.queue.sent_records,
                "records_dropped": s.queue.dropped,
                "lost_in_flight_batches": s.lost_in_flight,
                "connects": s.connects,
            }
            for sid, s in self.senders.items()
        }


def _restarted(old: ShardInfo, new: ShardInfo) -> bool:
    return old.grpc_addr != new.grpc_addr or old.started_ms != new.started_ms
