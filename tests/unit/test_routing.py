"""Routing table and router decisions (pure)."""

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


def test_table_applies_changes_and_resets():
    """Route adds/removes patch the table; a reset removes one shard everywhere."""
    t = _table({"A": {"s1"}})
    t.apply(Change("route", "s2", add=("A", "B")))
    assert t.shards_for("A") == {"s1", "s2"} and t.shards_for("B") == {"s2"}
    t.apply(Change("route", "s1", remove=("A",)))
    assert t.shards_for("A") == {"s2"}
    t.apply(Change("reset", "s2"))
    assert len(t) == 0


def test_replaying_changes_over_newer_snapshot_converges():
    """Changes that the snapshot already contains, replayed in order, leave the table correct."""
    t = _table({"A": set()})  # snapshot taken after add+del of (A, s1)
    t.apply(Change("route", "s1", add=("A",)))
    t.apply(Change("route", "s1", remove=("A",)))
    assert t.shards_for("A") == frozenset()


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
