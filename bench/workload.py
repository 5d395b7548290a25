"""The benchmark's workload, pure and deterministic: tokens, subscriptions, tick payloads, latency.

The orchestrator and every fleet process derive the same subscription table
from the same seed, so the orchestrator knows how many ticks each client must
receive without asking them.
"""

from __future__ import annotations

import bisect
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping

LATENCY_STEP_US = 10  # histogram resolution below 100 ms
COARSE_FROM_US = 100_000
COARSE_STEP_US = 1_000


def token_name(rank: int) -> str:
    """Rank 0 is the most popular token."""
    return f"T{rank:05d}"


def zipf_cdf(n: int, s: float) -> list[float]:
    """Cumulative Zipf(s) probabilities over ranks 0..n-1."""
    weights = [1 / (rank + 1) ** s for rank in range(n)]
    total = sum(weights)
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def subscriptions(conn_index: int, seed: int, cdf: list[float], k: int) -> list[str]:
    """The k distinct tokens connection `conn_index` subscribes to (popular ones more likely)."""
    rng = random.Random(seed * 1_000_003 + conn_index)
    picked: set[int] = set()
    k = min(k, len(cdf))
    while len(picked) < k:
        picked.add(bisect.bisect_left(cdf, rng.random()))
    return [token_name(r) for r in sorted(picked)]


def shard_of(conn_index: int, shards: int) -> int:
    """Connections are spread round-robin over the shards, as a load balancer would."""
    return conn_index % shards


def subscription_table(connections: int, shards: int, seed: int, tokens: int, s: float,
                       k: int) -> dict[str, Counter[int]]:
    """token → {shard index: subscribers there}: the whole load's routing truth."""
    cdf = zipf_cdf(tokens, s)
    table: dict[str, Counter[int]] = {}
    for i in range(connections):
        shard = shard_of(i, shards)
        for t in subscriptions(i, seed, cdf, k):
            table.setdefault(t, Counter())[shard] += 1
    return table


def fanout_fraction(table: Mapping[str, Counter[int]], tokens: int, shards: int) -> float:
    """Mean over uniformly ticking tokens of (shards with a subscriber / shards)."""
    reached = sum(len(c) for c in table.values())
    return reached / (tokens * shards)


def mean_subscribers(table: Mapping[str, Counter[int]], tokens: int) -> float:
    """Frames per tick when every token ticks equally often."""
    return sum(sum(c.values()) for c in table.values()) / tokens


def tick_payload(seq: int, ts_us: int, pad: str) -> bytes:
    """A tick: per-token sequence number `q`, producer timestamp `t` (µs), some price fields."""
    return b'{"q":%d,"t":%d,"px":"%s"}' % (seq, ts_us, pad.encode())


# The position fields (partition, offset, ts) sit between the token and the payload.
TICK_RE = re.compile(rb'\{"type":"tick","token":"([^"]+)",[^{]*"data":\{"q":(\d+),"t":(\d+)')


def parse_tick(frame: bytes) -> tuple[str, int, int] | None:
    """(token, seq, ts_us) of a tick frame from the shard, None for anything else.

    A regex on the frame's known layout (the shard embeds the payload verbatim)
    costs a third of json.loads: the load generator shares the CPUs it measures.
    """
    m = TICK_RE.match(frame)
    if m is None:
        return None
    return m[1].decode(), int(m[2]), int(m[3])


def latency_bucket(latency_us: int) -> int:
    """Bucket key: 10 µs steps below 100 ms, 1 ms steps above (key = bucket's lower bound, µs)."""
    if latency_us < 0:
        return 0
    if latency_us < COARSE_FROM_US:
        return latency_us // LATENCY_STEP_US * LATENCY_STEP_US
    return latency_us // COARSE_STEP_US * COARSE_STEP_US


def merge_hist(hists: Iterable[Mapping]) -> Counter:
    """Sum counters from several fleet processes (numeric keys come back from JSON as strings)."""
    total: Counter = Counter()
    for h in hists:
        for k, v in h.items():
            total[int(k) if isinstance(k, str) and k.isdigit() else k] += v
    return total


def percentile_ms(hist: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0..1) in ms, at the histogram's resolution (upper edge of its bucket)."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for key in sorted(hist):
        seen += hist[key]
        if seen >= rank:
            step = LATENCY_STEP_US if key < COARSE_FROM_US else COARSE_STEP_US
            return (key + step) / 1000
    return None
