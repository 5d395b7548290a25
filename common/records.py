"""The record type the dispatcher and shard cores pass around.

Protobuf messages stop at the gRPC adapters; the cores see only this frozen
dataclass, so they can be tested with plain values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What a token (Kafka key, subscription name) may look like, everywhere.
TOKEN_RE = re.compile(r"[A-Za-z0-9._:/\-]{1,64}")


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record: the routing key (token) and its opaque payload."""

    token: str
    payload: bytes
    partition: int = 0
    offset: int = 0
    produce_ts_ms: int = 0
    # A token's last value re-sent to a shard that just subscribed to it, not a new tick.
    snapshot: bool = False
    # The token's latest value re-sent because records of it meant for this shard were dropped.
    resync: bool = False
    # Records of the token were dropped and no newer value is known: subscribers must be told.
    gap: bool = False

    def is_after(self, other: Record | None) -> bool:
        """True unless `other` is at or after this record's position (a duplicate or stale value).

        Offsets are ordered only within a partition; a token whose partition
        changed (a re-partitioned topic) starts afresh.
        """
        return other is None or other.partition != self.partition or self.offset > other.offset
