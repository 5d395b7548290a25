"""Routing table and router decisions (pure)."""

import random

import pytest

from common.records import Record
from common.registry import Change, ShardInfo, decode_change, expiry_margin_ms
from dispatcher.routing import Mode, Router, RoutingTable


def _table(routes):
    t = RoutingTable()
    t.replace(routes)
    t.healthy = True
    return t


def test_targeted_routes_only_to_subscribed_live_shards_in_order():
    """Each record goes to the live shards holding its token, per-shard order preserved."""
    t = _table({"A": {"s1", "s2"}, "B": {"s2"}, "C": {"s3"}})
    recs = [Record("A", b"1"), Record("B", b"2"), Record("A", b"3"), Record("C", b"4"), Record("Z", b"5")]
    plan = Router(t).route(recs, {"s1", "s2"})
    assert plan == {"s1": [recs[0], recs[2]], "s2": [recs[0], recs[1], recs[2]]}


def test_targeted_counts_deliveries_and_unrouted():
    """Counters record (record, shard) pairs and records nobody wanted."""
    t = _table({"A": {"s1", "s2"}})
    r = Router(t)
    r.route([Record("A", b""), Record("Q", b"")], {"s1", "s2"})
    assert (r.counters.records, r.counters.deliveries, r.counters.unrouted) == (2, 2, 1)


def test_targets_answers_lookups_without_counting():
    """targets() names the live shards a token would reach, in either mode, counting nothing."""
    t = _table({"A": {"s1", "s9"}})
    r = Router(t)
    assert r.targets("A", {"s1", "s2"}) == {"s1"}
    assert r.targets("Z", {"s1", "s2"}) == frozenset()
    r.mode = Mode.BROADCAST
    assert r.targets("Z", {"s1", "s2"}) == {"s1", "s2"}
    assert r.counters.records == 0


def test_broadcast_sends_everything_everywhere():
    """Broadcast mode ignores the table and gives every live shard every record."""
    recs = [Record("A", b"1"), Record("B", b"2")]
    plan = Router(_table({}), Mode.BROADCAST).route(recs, {"s1", "s2", "s3"})
    assert set(plan) == {"s1", "s2", "s3"}
    assert all(v == recs for v in plan.values())


def test_unhealthy_table_falls_back_to_broadcast():
    """Without a trustworthy table (Redis down) the router broadcasts rather than drop data."""
    t = _table({})
    t.healthy = False
    r = Router(t)
    plan = r.route([Record("A", b"1")], {"s1", "s2"})
    assert set(plan) == {"s1", "s2"}
    assert r.counters.fallback_batches == 1


def _routes(t: RoutingTable) -> dict[str, set[str]]:
    return {token: set(shards) for token, shards in t._routes.items()}


def test_table_applies_changes_and_resets():
    """Route adds/removes patch the table; a reset removes one shard everywhere and nothing else."""
    t = _table({"A": {"s1"}, "C": {"s3"}})
    t.apply(Change("route", "s2", add=("A", "B")))
    assert _routes(t) == {"A": {"s1", "s2"}, "B": {"s2"}, "C": {"s3"}}
    t.apply(Change("route", "s1", remove=("A", "never-routed")))
    assert _routes(t) == {"A": {"s2"}, "B": {"s2"}, "C": {"s3"}}
    t.apply(Change("route", "s3", add=("B",)))
    t.apply(Change("reset", "s2"))
    assert _routes(t) == {"B": {"s3"}, "C": {"s3"}} and len(t) == 2
    assert sorted(t.tokens_of("s3")) == ["B", "C"]
    assert t.tokens_of("s2") == []
    t.apply(Change("up", "s3"))  # not a route change: ignored
    assert _routes(t) == {"B": {"s3"}, "C": {"s3"}}


def _history(seed: int, n: int) -> list[Change]:
    """A random change feed over 4 shards and 6 tokens: adds, removes and resets."""
    rng = random.Random(seed)
    shards, tokens = ["s1", "s2", "s3", "s4"], ["A", "B", "C", "D", "E", "F"]
    out = []
    for _ in range(n):
        shard = rng.choice(shards)
        if rng.random() < 0.1:
            out.append(Change("reset", shard))
        else:
            out.append(Change("route", shard, add=tuple(rng.sample(tokens, rng.randint(0, 3))),
                              remove=tuple(rng.sample(tokens, rng.randint(0, 3)))))
    return out


def _truth(changes: list[Change]) -> dict[str, set[str]]:
    """What Redis holds after `changes`: a plain model of the route sets, one change at a time."""
    routes: dict[str, set[str]] = {}
    for c in changes:
        if c.op == "reset":
            for shards in routes.values():
                shards.discard(c.shard)
        for token in c.add:
            routes.setdefault(token, set()).add(c.shard)
        for token in c.remove:
            routes.get(token, set()).discard(c.shard)
    return {t: s for t, s in routes.items() if s}


@pytest.mark.parametrize("seed", range(20))
def test_replaying_changes_over_newer_snapshot_converges(seed):
    """Subscribed at change k, snapshot at m >= k: replaying changes k.. over it gives Redis's table."""
    changes = _history(seed, 40)
    final = _truth(changes)
    assert final  # a non-trivial table: replays must rebuild real routes
    for sub in range(0, 40, 7):
        for snap in range(sub, 41, 5):
            t = _table(_truth(changes[:snap]))  # the snapshot already contains changes sub..snap-1
            for change in changes[sub:]:
                t.apply(change)
            assert _routes(t) == final, (sub, snap)


def test_decode_change_rejects_garbage():
    """Malformed change-feed messages decode to None instead of raising."""
    assert decode_change(b"{bad") is None
    assert decode_change(b'{"op":"route"}') is None
    assert decode_change(b'{"op":"route","shard":"s","add":["A"],"del":["B"]}') == Change(
        "route", "s", ("A",), ("B",))


def test_expiry_margin_never_catches_a_live_shard():
    """The early-death margin is the reader's slack, capped at TTL minus two heartbeat periods."""
    def info(period_ms, ttl_ms):
        return ShardInfo("s", "g", "w", 0, 0, 0, 0, period_ms, ttl_ms)

    assert expiry_margin_ms(info(1000, 5000), slack_ms=1100) == 1100
    assert expiry_margin_ms(info(500, 2000), slack_ms=1100) == 1000
    assert expiry_margin_ms(info(1000, 2000), slack_ms=1100) == 0
    assert expiry_margin_ms(info(0, 0), slack_ms=1100) == 0


class CountingLookup:
    """A lookup that counts its calls, optionally batch-prefetching or uncached."""

    healthy = True

    def __init__(self, routes: dict[str, frozenset[str]], cache_per_poll: bool = True) -> None:
        self.routes = routes
        self.calls = 0
        self.prepared: list[set[str]] = []
        self.cache_per_poll = cache_per_poll

    def shards_for(self, token: str) -> frozenset[str]:
        self.calls += 1
        return self.routes.get(token, frozenset())


def test_router_looks_up_each_token_once_per_poll_unless_told_not_to():
    """The table is asked once per distinct token; a per-record baseline once per record."""
    from common.records import Record
    from dispatcher.routing import Router

    recs = [Record("A", b"1"), Record("B", b"2"), Record("A", b"3"), Record("A", b"4")]
    cached = CountingLookup({"A": frozenset({"s1"})})
    plan = Router(cached).route(recs, ["s1", "s2"])
    assert cached.calls == 2 and [r.payload for r in plan["s1"]] == [b"1", b"3", b"4"]
    per_record = CountingLookup({"A": frozenset({"s1"})}, cache_per_poll=False)
    assert Router(per_record).route(recs, ["s1"]) == plan and per_record.calls == 4


def test_router_lets_a_batch_lookup_prefetch_the_poll_tokens():
    """A lookup with prepare() gets the poll's distinct tokens before routing starts."""
    from common.records import Record
    from dispatcher.routing import Router

    class Batch(CountingLookup):
        def prepare(self, tokens):
            self.prepared.append(set(tokens))

    lookup = Batch({"B": frozenset({"s2"})})
    plan = Router(lookup).route([Record("A", b"1"), Record("B", b"2"), Record("B", b"3")], ["s1", "s2"])
    assert lookup.prepared == [{"A", "B"}] and list(plan) == ["s2"]


def test_a_new_table_is_empty_and_not_yet_trusted():
    """Before the first load the table routes nothing and is unhealthy (the router broadcasts)."""
    t = RoutingTable()
    assert (len(t), t.healthy, t.shards_for("A"), t.tokens_of("s1")) == (0, False, frozenset(), [])


def test_router_counters_add_up_over_polls_in_every_mode():
    """records, deliveries, unrouted and fallback_batches accumulate exactly across polls and modes."""
    t = _table({"A": {"s1", "s2"}, "B": {"s2"}})
    r = Router(t)
    recs = [Record("A", b""), Record("B", b""), Record("Z", b""), Record("Y", b"")]
    r.route(recs, {"s1", "s2"})
    r.route(recs, {"s1", "s2"})
    assert (r.counters.records, r.counters.deliveries, r.counters.unrouted) == (8, 6, 4)
    assert r.route(recs, set()) == {} and r.route([], {"s1"}) == {}
    assert (r.counters.records, r.counters.deliveries, r.counters.unrouted) == (12, 6, 8)
    t.healthy = False
    r.route(recs, {"s1", "s2"})
    r.route(recs[:1], {"s1", "s2"})
    assert (r.counters.fallback_batches, r.counters.deliveries, r.counters.records) == (2, 16, 17)
    r.mode = Mode.BROADCAST  # a chosen broadcast is no fallback
    r.route(recs, {"s1", "s2", "s3"})
    assert (r.counters.fallback_batches, r.counters.deliveries, r.counters.unrouted) == (2, 28, 8)
    assert r.route([], {"s1"}) == {} and r.route(recs, set()) == {}  # nothing to send, or nobody to get it
    assert (r.counters.records, r.counters.deliveries, r.counters.unrouted) == (25, 28, 12)


def test_a_lookup_that_says_nothing_about_caching_is_cached_per_poll():
    """Without a cache_per_poll attribute the router asks the lookup once per distinct token."""

    class Plain:
        healthy = True

        def __init__(self) -> None:
            self.calls = 0

        def shards_for(self, token: str) -> frozenset[str]:
            self.calls += 1
            return frozenset({"s1"})

    lookup = Plain()
    plan = Router(lookup).route([Record("A", b"1"), Record("A", b"2"), Record("B", b"3")], {"s1"})
    assert lookup.calls == 2 and [r.payload for r in plan["s1"]] == [b"1", b"2", b"3"]
