"""The dispatcher's registry sync: every decision of `SyncCore` with plain values and a fake clock,
and the adapter's subscribe → confirm → load order against a fake Redis at the client seam."""

from __future__ import annotations

import logging

import pytest

from common.registry import ShardInfo
from dispatcher.registry_sync import RegistrySync
from dispatcher.shard_addrs import AddressPolicy, parse_networks
from dispatcher.sync_core import MAX_REFUSED_LOGGED, Step, SyncCore


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def info(sid: str, addr: str = "127.0.0.1:7000") -> ShardInfo:
    return ShardInfo(sid, addr, "ws://x", 0, 0, 0, 0)


def core(**kw) -> tuple[SyncCore, Clock, Clock, list]:
    mono, wall = Clock(100.0), Clock(5000.0)
    calls: list = []
    c = SyncCore(refresh_s=kw.pop("refresh_s", 0.5), janitor_grace_s=kw.pop("janitor_grace_s", 10.0),
                 on_route_add=lambda t, s: calls.append(("add", t, s)),
                 on_mode=lambda m: calls.append(("mode", m)), clock=mono, wall=wall, **kw)
    return c, mono, wall, calls


def test_a_route_message_patches_the_table_and_reports_each_added_token():
    """A route change adds/removes the shard per token, counts, stamps the time, calls on_route_add."""
    c, _, wall, calls = core()
    c.table.replace({"B": {"s1", "s2"}})
    wall.now = 5001.5
    assert (c.live, c.dead, c.changes_applied, c.resyncs, c.reloads) == ({}, [], 0, 0, 0)
    assert c.message(b'{"op":"route","shard":"s1","add":["A","C"],"del":["B"]}') is Step.ROUTE
    assert (c.shards_for("A"), c.shards_for("B"), c.shards_for("C")) == ({"s1"}, {"s2"}, {"s1"})
    assert calls == [("add", "A", "s1"), ("add", "C", "s1")]
    assert (c.changes_applied, c.changes_rejected, c.last_sync_s) == (1, 0, 5001.5)
    c.message(b'{"op":"down","shard":"s2"}')
    assert c.changes_applied == 2


def test_a_reset_message_drops_that_shard_only():
    """A shard's reset removes it from every token and leaves the other shards' routes alone."""
    c, _, _, calls = core()
    c.table.replace({"A": {"s1", "s2"}, "B": {"s1"}, "C": {"s3"}})
    assert c.message(b'{"op":"reset","shard":"s1"}') is Step.ROUTE
    assert dict(c.table._routes) == {"A": {"s2"}, "C": {"s3"}} and calls == []


@pytest.mark.parametrize("op", ["up", "down"])
def test_up_and_down_messages_ask_for_a_liveness_read_and_leave_the_table(op):
    """A shard's up/down is counted and tells the adapter to re-read liveness; routes are untouched."""
    c, _, _, calls = core()
    c.table.replace({"A": {"s1"}})
    assert c.message(b'{"op":"%s","shard":"s1"}' % op.encode()) is Step.LIVENESS
    assert c.shards_for("A") == {"s1"} and calls == [] and c.changes_applied == 1 and c.last_sync_s == 5000.0


def test_a_mode_message_is_followed_at_once():
    """An operator's mode change calls on_mode with the new mode and patches no route."""
    c, _, _, calls = core()
    assert c.message(b'{"op":"mode","shard":"","value":"broadcast"}') is Step.MODE
    assert calls == [("mode", "broadcast")] and len(c.table) == 0 and c.changes_applied == 1


@pytest.mark.parametrize("raw", [
    b"{bad", b"[]", b'{"op":"explode","shard":"s1"}', b'{"op":"route","shard":"bad id!","add":["A"]}',
    b'{"op":"route","shard":"s1","add":["no spaces"]}', b'{"op":"mode","shard":"","value":"fast"}',
    b"\xff\xfe", b"x" * ((8 << 20) + 1),
])
def test_malformed_or_unknown_messages_are_counted_and_change_nothing(raw):
    """Garbage, unknown ops, invalid ids/tokens, unknown modes: rejected, counted, nothing applied."""
    c, _, _, calls = core()
    c.table.replace({"A": {"s1"}})
    assert c.message(raw) is Step.REJECTED
    assert (c.changes_rejected, c.changes_applied, c.last_sync_s, calls) == (1, 0, 0.0, [])
    assert c.shards_for("A") == {"s1"} and len(c.table) == 1


def test_rejections_are_logged_for_the_first_ten_then_every_thousandth(caplog):
    """A flood of forged messages cannot flood the log: #1-10, then #1000, #2000 … are logged."""
    c, _, _, _ = core()
    with caplog.at_level(logging.WARNING, logger="dispatcher.registry_sync"):
        for _ in range(2000):
            c.message(b"{bad")
    logged = [r.getMessage().split("#")[1].split(" ")[0] for r in caplog.records]
    assert logged == [str(n) for n in range(1, 11)] + ["1000", "2000"]
    assert caplog.records[0].getMessage() == "rejected change-feed message #1 (4 bytes): b'{bad'"


def test_a_rejected_message_is_logged_cut_to_120_bytes(caplog):
    """Only the first 120 bytes of a forged message reach the log, with its full length."""
    c, _, _, _ = core()
    raw = b"<" + b"x" * 200
    with caplog.at_level(logging.WARNING, logger="dispatcher.registry_sync"):
        c.message(raw)
    assert caplog.records[0].getMessage() == f"rejected change-feed message #1 (201 bytes): {raw[:120]!r}"


def test_first_load_is_trusted_at_once_and_follows_the_stored_mode():
    """The first load marks the table healthy with no grace, and applies a stored mode."""
    c, _, _, calls = core(grace_s=3.0)
    assert not c.healthy and not c.connected
    c.table.replace({"A": {"s1"}})
    c.loaded("broadcast")
    assert c.healthy and c.connected and c.resyncs == 1 and calls == [("mode", "broadcast")]


def test_a_reload_after_a_reconnect_is_trusted_only_after_the_grace():
    """After a lost connection the reloaded table is connected but untrusted until grace_s has passed."""
    c, mono, _, calls = core(grace_s=3.0)
    c.loaded(None)
    assert c.lost() is True and not c.healthy and not c.connected
    assert c.lost() is False  # already lost: the adapter logs only the first failure
    mono.now = 200.0
    c.loaded(None)
    assert c.connected and not c.healthy and c.resyncs == 2 and calls == []
    mono.now = 202.999
    assert not c.healthy
    mono.now = 203.0
    assert c.healthy


def test_without_a_grace_a_reloaded_table_is_trusted_at_once_from_any_clock():
    """grace_s defaults to 0: after a reconnect the table is trusted as soon as it is loaded, even at t=0."""
    c, mono, _, _ = core()
    mono.now = 0.0
    c.loaded(None)
    assert c.healthy
    c.lost()
    c.loaded(None)
    assert c.healthy and c.resyncs == 2


def test_periodic_reload_replaces_the_table_and_is_counted():
    """A full reload replaces every route (repairing lost changes) and counts one reload."""
    c, _, _, _ = core()
    c.table.replace({"A": {"s1"}, "B": {"s2"}})
    c.reloaded({"B": {"s3"}, "C": set()})
    assert dict(c.table._routes) == {"B": {"s3"}} and c.reloads == 1
    c.reloaded({})
    assert len(c.table) == 0 and c.reloads == 2


def test_liveness_slack_is_two_refresh_periods_plus_100ms():
    """The early-death slack handed to load_shards is 2 x refresh_s in ms plus 100 ms."""
    assert core(refresh_s=0.5)[0].slack_ms == 1100
    assert core(refresh_s=0.2)[0].slack_ms == 500


def test_shards_outside_the_allowed_networks_are_not_live_and_logged_once(caplog):
    """A shard at a disallowed address is dropped from live (counted by the policy) and logged once."""
    policy = AddressPolicy(parse_networks("127.0.0.0/8"))
    c, _, wall, _ = core(policy=policy)
    wall.now = 6000.0
    with caplog.at_level(logging.WARNING, logger="dispatcher.registry_sync"):
        for _ in range(3):
            due = c.shards_read({"s1": info("s1"), "evil": info("evil", "8.8.8.8:7000")}, ["d1"])
    assert list(c.live) == ["s1"] and c.dead == ["d1"] and due == [] and c.last_sync_s == 6000.0
    assert policy.refused == 3
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring shard evil: address '8.8.8.8:7000' outside --shard-networks"]


def test_a_refused_address_is_logged_cut_to_100_characters(caplog):
    """A forged address is logged (and remembered) as its first 100 characters only."""
    c, _, _, _ = core(policy=AddressPolicy(parse_networks("127.0.0.0/8")))
    addr = "h" * 150 + ":1"
    with caplog.at_level(logging.WARNING, logger="dispatcher.registry_sync"):
        c.shards_read({"evil": info("evil", addr)}, [])
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring shard evil: address {addr[:100]!r} outside --shard-networks"]


def test_refused_addresses_logged_are_bounded():
    """At most MAX_REFUSED_LOGGED distinct (shard, address) pairs are remembered for logging."""
    c, _, _, _ = core(policy=AddressPolicy(parse_networks("127.0.0.0/8")))
    for i in range(MAX_REFUSED_LOGGED + 5):
        c.shards_read({f"e{i}": info(f"e{i}", "8.8.8.8:1")}, [])
    assert len(c._refused_seen) == MAX_REFUSED_LOGGED and c.live == {}


def test_janitor_waits_for_the_grace_then_forgets_each_dead_shard_once(caplog):
    """A dead shard is due exactly when dead for janitor_grace_s; once forgotten it is not due again."""
    c, mono, _, _ = core(janitor_grace_s=10.0)
    assert c.shards_read({}, ["d1"]) == []
    mono.now = 105.0
    assert c.shards_read({}, ["d1", "d2"]) == []
    mono.now = 109.999
    assert c.shards_read({}, ["d1", "d2"]) == []
    mono.now = 110.0
    assert c.shards_read({}, ["d1", "d2"]) == ["d1"]
    with caplog.at_level(logging.INFO, logger="dispatcher.registry_sync"):
        c.forgotten("d1")
    assert [r.getMessage() for r in caplog.records] == ["janitor removed dead shard d1"]
    assert c.shards_read({}, ["d2"]) == []
    mono.now = 115.0
    assert c.shards_read({}, ["d2"]) == ["d2"]


def test_a_shard_that_comes_back_restarts_its_janitor_grace():
    """A dead shard that heartbeats again is no longer tracked: dying again starts a new grace."""
    c, mono, _, _ = core(janitor_grace_s=10.0)
    c.shards_read({}, ["d1"])
    mono.now = 109.0
    c.shards_read({"d1": info("d1")}, [])
    mono.now = 111.0
    assert c.shards_read({}, ["d1"]) == []
    mono.now = 121.0
    assert c.shards_read({}, ["d1"]) == ["d1"]


def test_a_janitor_refused_because_the_shard_is_back_is_retried():
    """A due shard the janitor could not forget (it came back meanwhile) stays due on the next read."""
    c, mono, _, _ = core(janitor_grace_s=0.0)
    assert c.shards_read({}, ["d1"]) == ["d1"]
    mono.now = 101.0
    assert c.shards_read({}, ["d1"]) == ["d1"]  # not forgotten: still tracked from its first sighting


def test_default_policy_allows_loopback_and_private_ranges_only():
    """With no policy given, the default networks apply: loopback admitted, a public address refused."""
    c, _, _, _ = core()
    c.shards_read({"s1": info("s1", "127.0.0.1:1"), "s2": info("s2", "10.1.2.3:1"),
                   "s3": info("s3", "1.1.1.1:1")}, [])
    assert sorted(c.live) == ["s1", "s2"]


# -- the adapter against a fake Redis --------------------------------------------------------


class FakePubSub:
    """Records subscribe/confirmation into the shared log; then serves queued messages."""

    def __init__(self, log: list, messages: list, on_empty) -> None:
        self.log, self.messages, self.on_empty = log, messages, on_empty
        self.confirmations = 2  # two reads with no message before the confirmation arrives
        self.closed = False

    def subscribe(self, channel: str) -> None:
        self.log.append(("subscribe", channel))

    def get_message(self, timeout: float = 0.0):
        if self.confirmations:
            self.confirmations -= 1
            if self.confirmations:
                return None
            self.log.append("confirmed")
            return {"type": "subscribe", "data": 1}
        if self.messages:
            return {"type": "message", "data": self.messages.pop(0)}
        self.on_empty()
        return None

    def close(self) -> None:
        self.closed = True


class FakePipe:
    def __init__(self, redis: FakeRedis) -> None:
        self.r, self.ops = redis, []

    def hgetall(self, key):
        self.ops.append(self.r.hashes.get(key, {}))

    def pttl(self, key):
        self.ops.append(5000 if key in self.r.hashes else -2)

    def smembers(self, key):
        self.r.log.append(("load", key))
        self.ops.append(self.r.sets.get(key, set()))

    def execute(self):
        return self.ops


class FakeRedis:
    """Just the commands RegistrySync uses, over dicts; every table load is logged."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.sets: dict[str, set[bytes]] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.mode: bytes | None = None
        self.pubsubs: list[FakePubSub] = []
        self.messages: list[bytes] = []
        self.on_empty = lambda: None

    def register_script(self, script):
        return lambda keys, args: 0

    def pubsub(self):
        ps = FakePubSub(self.log, self.messages, self.on_empty)
        self.pubsubs.append(ps)
        return ps

    def smembers(self, key):
        return self.sets.get(key, set())

    def pipeline(self, transaction=True):
        return FakePipe(self)

    def get(self, key):
        return self.mode


def test_adapter_loads_the_table_only_after_the_subscription_is_confirmed():
    """subscribe → confirmation → load: a snapshot taken before the confirmation could miss a change."""
    log: list = []
    r = FakeRedis(log)
    r.sets = {"ns:shards": {b"s1"}, "ns:tokens:s1": {b"A", b"B"}}
    r.hashes = {"ns:shard:s1": {b"grpc": b"127.0.0.1:7000", b"ws": b"ws://x", b"started_ms": b"1",
                                b"hb_ms": b"1"}}
    r.mode = b"broadcast"
    r.messages.append(b'{"op":"route","shard":"s1","add":["C"]}')
    modes: list[str] = []
    sync = RegistrySync("redis://unused", "ns", refresh_s=60.0, janitor_grace_s=10.0, backoff_cap_s=1.0,
                        on_mode=modes.append, client=r)
    r.on_empty = sync._stop.set
    sync.backoff.attempt = 3
    sync._session()
    assert log == [("subscribe", "ns:changes"), "confirmed", ("load", "ns:tokens:s1")]
    assert list(sync.live) == ["s1"] and sync.connected and sync.healthy and modes == ["broadcast"]
    assert {t: set(sync.shards_for(t)) for t in "ABC"} == {"A": {"s1"}, "B": {"s1"}, "C": {"s1"}}
    assert sync.backoff.attempt == 0 and sync.resyncs == 1 and r.pubsubs[0].closed
