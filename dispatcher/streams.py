"""One queue and sender per shard, reconciled with the registry's live set and the streams' own acks."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from common.records import Record
from common.registry import ShardInfo
from dispatcher.grpc_out import ShardSender, StreamPolicy
from dispatcher.shard_queue import ShardQueue

log = logging.getLogger(__name__)
GONE_MEMORY = 1024  # shards counted dead that are remembered, in case the same process returns


class ShardStreams:
    """Starts a sender for each shard that appears, stops it when the shard is gone.

    A shard missing from the registry is not gone while its stream keeps
    acking within `liveness_s`: an emptied or restarted Redis is not a shard
    death. A shard counted dead that comes back as the same process (a paused
    shard, same start time) gets the latest value of every token routed to it
    first, so its clients, which never disconnected, are resynced instead of
    silently missing what was dropped meanwhile.
    """

    def __init__(self, queue_records: int, policy: StreamPolicy, liveness_s: float,
                 latest: Callable[[str], Record | None] = lambda token: None,
                 tokens_of: Callable[[str], list[str]] = lambda shard_id: [],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue_records = queue_records
        self.policy = policy
        self.liveness_s = liveness_s
        self.latest = latest
        self.tokens_of = tokens_of
        self.clock = clock
        self.senders: dict[str, ShardSender] = {}
        # Records lost to shards no longer streamed: routed to a shard without a
        # sender, plus every drop of a sender's queue once that sender is stopped
        # (its own per-shard stats disappear with it).
        self.dropped_gone = 0
        self.resynced_returns = 0  # shards counted dead that came back and were resynced
        self.routable: frozenset[str] = frozenset()  # the shards the router may target
        self._gone: dict[str, int] = {}  # shard id → start time of the process counted dead
        self._seen: dict[str, ShardInfo] | None = None

    def reconcile(self, live: dict[str, ShardInfo]) -> None:
        """Match senders to `live` (a dict replaced, never mutated, by the registry sync)."""
        unregistered = [sid for sid in self.senders if sid not in live]
        if live is self._seen and not unregistered:
            return
        self._seen = live
        now = self.clock()
        for sid, sender in list(self.senders.items()):
            info = live.get(sid)
            if info is not None and _restarted(sender.info, info):
                log.info("stopping stream to %s (restarted)", sid)
                self._stop(sid)
            elif info is None and not sender.proven_alive(now, self.liveness_s):
                log.info("stopping stream to %s (gone from the registry, no recent ack)", sid)
                self._gone[sid] = sender.info.started_ms
                self._stop(sid)
        for sid, info in live.items():
            if sid not in self.senders:
                self._start(info)
        self.routable = frozenset(self.senders)

    def _start(self, info: ShardInfo) -> None:
        sid = info.shard_id
        queue = ShardQueue(self.queue_records, self.latest)
        if self._gone.pop(sid, None) == info.started_ms:
            # Only tokens this dispatcher consumes: another one owns the other
            # partitions and resyncs their tokens itself.
            tokens = [t for t in self.tokens_of(sid) if self.latest(t) is not None]
            log.info("shard %s is back after being counted dead: resyncing %d tokens", sid, len(tokens))
            queue.mark_lost(tokens)
            self.resynced_returns += 1
        while len(self._gone) > GONE_MEMORY:
            del self._gone[next(iter(self._gone))]
        sender = ShardSender(info, queue, self.policy)
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

    def pending_offsets(self) -> dict[int, int]:
        """partition → lowest offset some shard has not acked yet (commits stay below it)."""
        low: dict[int, int] = {}
        for sender in list(self.senders.values()):
            for part, off in sender.queue.pending_offsets().items():
                if off < low.get(part, off + 1):
                    low[part] = off
        return low

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
        now = self.clock()
        return {
            sid: {
                "state": s.state,
                "grpc": s.info.grpc_addr,
                "queue_depth": s.queue.depth,
                "in_flight_batches": s.queue.in_flight,
                "in_flight_records": s.queue.in_flight_records,
                "records_offered": s.queue.offered,
                "records_sent": s.queue.sent_records,
                "records_dropped": s.queue.dropped,
                "records_resent": s.queue.resent_records,
                "resyncs_sent": s.queue.resyncs,
                "gaps_sent": s.queue.gaps,
                "stream_failures": s.stream_failures,
                "connects": s.connects,
                "registered": self._seen is not None and sid in self._seen,
                "last_ack_age_s": round(now - s.queue.last_ack_s, 3) if s.queue.last_ack_s else None,
            }
            for sid, s in list(self.senders.items())
        }


def _restarted(old: ShardInfo, new: ShardInfo) -> bool:
    return old.grpc_addr != new.grpc_addr or old.started_ms != new.started_ms
