"""Pure pieces of the benchmark and of the shard's GC policy: workload, parsing, percentiles."""

from __future__ import annotations

from bench.workload import (
    fanout_fraction,
    latency_bucket,
    parse_tick,
    percentile_ms,
    subscription_table,
    subscriptions,
    tick_payload,
    zipf_cdf,
)
from common.records import Record
from shard.gcpolicy import GcAction, GcPolicy
from shard.protocol import tick_frame


def test_subscriptions_are_deterministic_distinct_and_popularity_skewed():
    """The same (seed, connection) always yields the same k distinct tokens; rank 0 is the most common."""
    cdf = zipf_cdf(1000, 1.0)
    assert subscriptions(42, 7, cdf, 5) == subscriptions(42, 7, cdf, 5)
    assert len(set(subscriptions(42, 7, cdf, 5))) == 5
    table = subscription_table(3000, 3, 7, 1000, 1.0, 5)
    hot, tail = table["T00000"], table.get("T00999")
    assert len(hot) == 3 and sum(hot.values()) > 1000
    assert tail is None or sum(tail.values()) < 20
    sparse = subscription_table(300, 3, 7, 1000, 1.0, 5)  # 1.5 subscriptions per token on average
    assert 0 < fanout_fraction(sparse, 1000, 3) < 0.5  # the long tail is on few shards


def test_tick_frames_parse_back_to_token_sequence_and_timestamp():
    """A shard tick frame carrying a bench payload yields (token, seq, ts); other frames None."""
    frame = tick_frame(Record("T00042", tick_payload(17, 1_700_000_000_123_456, "0" * 60), 3, 99, 5))
    body = frame[frame.index(b"{"):]  # the frame minus its WebSocket header
    assert parse_tick(body) == ("T00042", 17, 1_700_000_000_123_456)
    assert parse_tick(b'{"type":"subscribed","tokens":["T1"]}') is None


def test_latency_percentiles_use_fine_then_coarse_buckets():
    """10 µs buckets below 100 ms, 1 ms above; percentiles report the bucket's upper edge."""
    assert latency_bucket(1234) == 1230 and latency_bucket(123_456) == 123_000 and latency_bucket(-5) == 0
    hist = {1230: 98, 50_000: 1, 123_000: 1}
    assert percentile_ms(hist, 0.5) == 1.24
    assert percentile_ms(hist, 0.99) == 50.01
    assert percentile_ms(hist, 1.0) == 124.0
    assert percentile_ms({}, 0.5) is None


def test_gc_policy_freezes_after_growth_and_refreezes_after_churn():
    """Freeze once connections grew by a step; unfreeze-collect-freeze after heavy churn only."""
    p = GcPolicy(min_growth=100, growth_fraction=0.05, churn_fraction=0.5)
    assert p.decide(50) is GcAction.NONE
    assert p.decide(4000) is GcAction.FREEZE
    assert p.decide(4100) is GcAction.NONE  # below 5 % growth
    assert p.decide(4250) is GcAction.FREEZE
    for _ in range(2000):
        p.closed()
    assert p.decide(3000) is GcAction.NONE  # churn below half of the frozen connections
    for _ in range(200):
        p.closed()
    assert p.decide(3000) is GcAction.REFREEZE
    assert p.decide(3000) is GcAction.NONE
