"""Hostile input to the dispatcher: Kafka keys, the last-value map, registry messages and addresses."""

from __future__ import annotations

import socket

from common.records import Record
from common.registry import MAX_CHANGE_BYTES, Change, decode_change
from dispatcher.consumer import _token
from dispatcher.last_values import LastValues
from dispatcher.shard_addrs import DEFAULT_NETWORKS, AddressPolicy, parse_networks


def test_only_keys_that_are_tokens_become_tokens():
    """Empty, oversized, non-ASCII, newline, wildcard and missing keys are refused."""
    assert _token(b"BTC-USD") == "BTC-USD"
    assert _token(b"a" * 64) == "a" * 64
    for bad in (None, b"", b"a" * 65, b"x" * 10_000, b"BTC\nUSD", b"*", b"\xff\xfe", "é".encode()):
        assert _token(bad) is None, bad


def test_last_values_keep_the_newest_per_token_and_forget_the_least_recent_beyond_the_cap():
    """Updating a token refreshes it; past max_tokens the least recently updated one goes."""
    lv = LastValues(max_tokens=2)
    lv.put(Record("A", b"1", 0, 1))
    lv.put(Record("B", b"1", 0, 2))
    lv.put(Record("A", b"2", 0, 3))  # A is now the most recent
    lv.put(Record("C", b"1", 0, 4))
    assert lv.get("B") is None and lv.get("A").payload == b"2" and lv.get("C") is not None
    assert len(lv) == 2 and lv.evicted == 1


def test_last_values_stay_flat_under_a_million_distinct_keys():
    """A flood of distinct keys never holds more than the cap."""
    lv = LastValues(max_tokens=1000)
    for i in range(1_000_000):
        lv.put(Record(f"K{i}", b"", 0, i))
    assert len(lv) == 1000 and lv.get("K999999") is not None and lv.get("K0") is None


def test_partitions_owned_elsewhere_are_forgotten():
    """After a rebalance only the tokens of partitions still assigned keep their last value."""
    lv = LastValues(10)
    lv.put(Record("A", b"", 0, 1))
    lv.put(Record("B", b"", 1, 1))
    lv.retain_partitions({1})
    assert lv.get("A") is None and lv.get("B") is not None


def test_change_feed_messages_follow_a_strict_schema():
    """Deep, huge, non-UTF-8, wrongly typed or unknown messages are rejected, valid ones parsed."""
    ok = decode_change(b'{"op":"route","shard":"s-1","add":["BTC-USD"],"del":[]}')
    assert ok == Change("route", "s-1", ("BTC-USD",), ())
    assert decode_change(b'{"op":"mode","shard":"","value":"broadcast"}').value == "broadcast"
    assert decode_change(b'{"op":"reset","shard":"s-1"}') == Change("reset", "s-1")
    for bad in (b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", b"x" * (MAX_CHANGE_BYTES + 1),
                b'{"op":"route","shard":"s-1","add":"BTC"}', b'{"op":"route","shard":"s-1","add":[1]}',
                b'{"op":"route","shard":"s-1","add":["*"]}', b'{"op":"route","shard":"a b"}',
                b'{"op":"mode","shard":"","value":"off"}', b'{"op":"nuke","shard":"s-1"}',
                b'["op"]', b'{"op":"up","shard":7}', b'{"op":"up","shard":"' + b"s" * 65 + b'"}'):
        assert decode_change(bad) is None, bad[:40]


def test_shard_addresses_must_be_inside_the_allowed_networks():
    """IPs inside the CIDRs pass; public IPs, bad ports, unbracketed IPv6 and bad names do not."""
    names = {"shard-1": ["10.1.2.3"], "evil": ["10.0.0.1", "8.8.8.8"]}

    def resolve(host: str) -> list[str]:
        if host not in names:
            raise socket.gaierror("no such name")
        return names[host]

    policy = AddressPolicy(parse_networks(DEFAULT_NETWORKS), resolve=resolve)
    for addr in ("127.0.0.1:9701", "[::1]:9701", "192.168.1.9:1", "shard-1:9701"):
        assert policy.allows(addr), addr
    for addr in ("8.8.8.8:9701", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1", "::1:9701",
                 "evil:9701", "unknown:9701", "127.0.0.1:x"):
        assert not policy.allows(addr), addr
    assert policy.refused == 8


def test_resolved_names_are_cached_for_their_ttl():
    """A name is resolved once per TTL, not on every registry refresh."""
    calls, now = [], [0.0]
    policy = AddressPolicy(parse_networks("10.0.0.0/8"), ttl_s=60,
                           resolve=lambda h: calls.append(h) or ["10.0.0.2"], clock=lambda: now[0])
    assert policy.allows("s:1") and policy.allows("s:1")
    now[0] = 61.0
    assert policy.allows("s:1")
    assert calls == ["s", "s"]
