"""Per-shard dispatcher queue, rate limiter and backoff (pure)."""

import random

from common.backoff import Backoff
from common.records import Record
from dispatcher.shard_queue import ShardQueue
from shard.ratelimit import TokenBucket


def _recs(n, start=0, token="T"):
    return [Record(token, str(i).encode(), 0, i) for i in range(start, start + n)]


def _payloads(got):
    return [r.payload for r in got[1]]


def test_queue_drops_oldest_beyond_bound_and_resyncs_their_tokens_first():
    """Past max_records the oldest go (counted, offer never blocks); the token's latest value leads."""
    latest = {"T": Record("T", b"6", 0, 6)}
    q = ShardQueue(max_records=5, latest=latest.get)
    assert q.offer(_recs(4)) == 0
    assert q.offer(_recs(3, 4)) == 2
    q.open_stream(window=4)
    seq, batch = q.take(10, 0.1, q.epoch)
    assert seq == 1 and batch == [Record("T", b"6", 0, 6, resync=True)]
    assert _payloads(q.take(10, 0.1, q.epoch)) == [b"2", b"3", b"4", b"5", b"6"]
    assert q.dropped == 2 and q.resyncs == 1


def test_dropped_token_without_a_known_value_gets_a_gap_marker():
    """Loss with no value to resync with is still announced: a gap record for the token."""
    q = ShardQueue(max_records=1)
    q.offer(_recs(1, token="A") + _recs(1, token="B"))
    q.open_stream(window=4)
    assert q.take(10, 0.1, q.epoch)[1] == [Record("A", b"", gap=True)]
    assert q.gaps == 1


def test_unacked_batches_are_resent_in_order_on_the_next_stream():
    """A dead stream's unacked batches go back in front of newer records, in their order."""
    q = ShardQueue(100)
    q.offer(_recs(6))
    q.open_stream(window=4)
    assert _payloads(q.take(2, 0.01, q.epoch)) == [b"0", b"1"]
    assert _payloads(q.take(2, 0.01, q.epoch)) == [b"2", b"3"]
    q.ack(1)
    q.offer(_recs(1, 6))
    assert q.close_stream() == 2
    q.open_stream(window=4)
    got = q.take(10, 0.01, q.epoch)
    assert got[0] == 1 and _payloads(got) == [b"2", b"3", b"4", b"5", b"6"]
    assert q.resent_records == 2 and q.dropped == 0
    assert q.sent_records == 4 + 5  # a counter: the resent records count again, nothing is taken back


def test_unacked_records_count_toward_the_bound():
    """Records in flight count against max_records, so a stalled shard's memory stays bounded."""
    q = ShardQueue(max_records=4)
    q.offer(_recs(3))
    q.open_stream(window=4)
    q.take(3, 0.01, q.epoch)
    assert q.offer(_recs(3, 3)) == 2
    assert q.depth == 1 and q.dropped == 2


def test_ping_uses_credit_and_its_ack_is_proof_of_life():
    """An empty batch takes a seq and a credit; acking it refreshes last_ack_s."""
    now = [10.0]
    q = ShardQueue(100, clock=lambda: now[0])
    q.open_stream(window=1)
    assert q.last_ack_s == 10.0
    assert q.ping(q.epoch) == 1
    assert q.ping(q.epoch) is None  # window full
    now[0] = 12.5
    q.ack(1)
    assert q.last_ack_s == 12.5 and q.ping(q.epoch) == 2


def test_pending_offsets_hold_commits_below_unacked_records():
    """The lowest unacked or queued offset per partition is reported; snapshots never hold back."""
    q = ShardQueue(100)
    q.offer([Record("A", b"", 0, 5), Record("B", b"", 1, 7), Record("A", b"", 0, 8),
             Record("C", b"", 2, 1, snapshot=True)])
    q.open_stream(window=4)
    q.take(1, 0.01, q.epoch)
    assert q.pending_offsets() == {0: 5, 1: 7}
    q.ack(1)
    assert q.pending_offsets() == {0: 8, 1: 7}


def test_queue_respects_credit_window():
    """No more than `window` unacked batches are handed out; an ack frees credit."""
    q = ShardQueue(100)
    q.offer(_recs(10))
    assert q.take(2, 0.01, q.epoch) is None  # no window granted yet
    q.open_stream(window=2)
    assert q.take(2, 0.01, q.epoch)[0] == 1
    assert q.take(2, 0.01, q.epoch)[0] == 2
    assert q.take(2, 0.01, q.epoch) is None
    q.ack(1)
    assert q.take(2, 0.01, q.epoch)[0] == 3


def test_batches_are_capped_by_bytes_too():
    """A batch stops before exceeding max_bytes, but always carries at least one record."""
    q = ShardQueue(100)
    q.offer([Record("T", b"x" * 600) for _ in range(5)])
    q.open_stream(window=10)
    sizes = [len(q.take(10, 0.01, q.epoch, max_bytes=1000)[1]) for _ in range(5)]
    assert sizes[:5] == [1, 1, 1, 1, 1]
    q.offer([Record("T", b"x" * 100) for _ in range(20)])
    assert len(q.take(100, 0.01, q.epoch, max_bytes=1000)[1]) == 9


def test_dead_stream_epoch_stops_taking():
    """After a stream dies its request iterator (old epoch) gets nothing, even on a new stream."""
    q = ShardQueue(100)
    q.offer(_recs(3))
    q.open_stream(4)
    old = q.epoch
    assert q.close_stream() == 0  # nothing was in flight
    q.open_stream(4)
    assert q.take(1, 0.01, old) is None
    assert q.take(1, 0.01, q.epoch) is not None


def test_token_bucket_rate_and_burst():
    """A bucket allows its burst at once, then refills at its rate."""
    now = [0.0]
    b = TokenBucket(rate_per_s=2, burst=3, clock=lambda: now[0])
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5
    assert b.take() and not b.take()


class RecordingRandom(random.Random):
    """Draws like random.Random(seed) but records each uniform(lo, hi) range it was asked for."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return super().uniform(a, b)


def test_backoff_grows_caps_and_resets():
    """Bounds double from base to the cap; each delay is drawn from [bound/2, bound]; reset starts over."""
    rng = RecordingRandom(1)
    b = Backoff(base_s=0.1, cap_s=1.0, rng=rng)
    delays = [b.next_delay_s() for _ in range(6)]
    bounds = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert rng.ranges == [(x / 2, x) for x in bounds]
    reference = random.Random(1)
    assert delays == [reference.uniform(x / 2, x) for x in bounds]
    b.reset()
    b.next_delay_s()
    assert rng.ranges[-1] == (0.05, 0.1)


def test_backoff_delays_are_jittered_not_the_bound():
    """The delay is the random draw, not the bound: different seeds give different delays, each below it."""
    draws = {Backoff(base_s=1.0, cap_s=1.0, rng=random.Random(seed)).next_delay_s() for seed in range(20)}
    assert len(draws) == 20 and all(0.5 <= d < 1.0 for d in draws)
    reference = random.Random(7)
    b = Backoff(base_s=0.1, cap_s=5.0, rng=random.Random(7))
    assert [b.next_delay_s() for _ in range(3)] == [reference.uniform(x / 2, x) for x in (0.1, 0.2, 0.4)]


def test_backoff_attempts_stop_counting_at_32():
    """The exponent saturates at 32 (no huge integers after a long outage): the bound stays base * 2**32."""
    rng = RecordingRandom(3)
    b = Backoff(base_s=1e-12, cap_s=1e9, rng=rng)
    for _ in range(40):
        b.next_delay_s()
    assert b.attempt == 32 and rng.ranges[-1] == (1e-12 * 2**31, 1e-12 * 2**32)


def test_keepalive_pings_quiet_clients_and_closes_silent_ones():
    """Quiet past the ping interval → one ping per interval; silent past the idle timeout → close."""
    from shard.keepalive import Action, keepalive_action

    assert keepalive_action(10, last_rx=5, last_ping=0, ping_interval_s=20, idle_timeout_s=60) \
        is Action.NONE
    assert keepalive_action(30, last_rx=5, last_ping=0, ping_interval_s=20, idle_timeout_s=60) \
        is Action.PING
    assert keepalive_action(30, last_rx=5, last_ping=25, ping_interval_s=20, idle_timeout_s=60) \
        is Action.NONE
    assert keepalive_action(70, last_rx=5, last_ping=50, ping_interval_s=20, idle_timeout_s=60) \
        is Action.CLOSE


def test_keepalive_boundaries_are_inclusive():
    """Quiet exactly idle_timeout_s: close; quiet and unpinged exactly ping_interval_s: ping; else nothing."""
    from shard.keepalive import Action, keepalive_action

    def act(now, last_rx, last_ping):
        return keepalive_action(now, last_rx=last_rx, last_ping=last_ping, ping_interval_s=20,
                                idle_timeout_s=60)

    assert act(65, 5, 0) is Action.CLOSE
    assert act(64.5, 5, 50) is Action.NONE  # quiet 59.5 s, pinged 14.5 s ago
    assert act(25, 5, 0) is Action.PING
    assert act(45, 5, 25) is Action.PING
    assert act(44.5, 5, 25) is Action.NONE
    assert act(24.5, 5, 0) is Action.NONE
