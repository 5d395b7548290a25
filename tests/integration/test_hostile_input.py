"""Hostile Kafka records and registry contents on the real servers: counted, never fatal, never relayed."""

from __future__ import annotations

import base64
import json

import pytest

from common.registry import ShardInfo, now_ms
from tests.integration.helpers import WsClient, produce, producer, registry, wait_for

pytestmark = pytest.mark.integration


def test_records_with_bad_keys_or_encodings_never_reach_clients_broken(stack):
    """Keys that are not tokens are counted invalid; non-UTF-8-JSON payloads arrive as base64."""
    a = stack.shard("A")
    d = stack.dispatcher()
    client = WsClient(a.ws_url)
    client.subscribe("HK-1")
    p = producer(stack.kafka.bootstrap)
    for key in (b"", b"*", b"a" * 100, b"HK\n1", "HK-é".encode(), None):
        p.send(stack.c.topic, key=key, value=b'{"px":1}')
    nasty = ['{"px": 1}'.encode("utf-16"), b"\xef\xbb\xbf" + b'{"px":1}', b'{"s":"\xed\xa0\x80"}']
    produce(p, stack.c.topic, [("HK-1", x) for x in nasty] + [("HK-1", b'{"px":2}')])
    frames = [json.loads(f) for f in client.ticks(4)]  # websocket-client rejects invalid UTF-8
    assert [base64.b64decode(f["data_b64"]) for f in frames[:3]] == nasty
    assert frames[3]["data"] == {"px": 2}
    wait_for(lambda: d.stats()["records_invalid"] == 6, what="bad keys counted")
    assert d.stats()["records_consumed"] == 4


def test_hostile_registry_content_never_stops_the_sync_nor_gets_dialled(stack):
    """Deep, non-UTF-8 and ill-typed feed messages, a non-UTF-8 shard id and a shard registered
    outside --shard-networks are counted and ignored; a forged route deletion is repaired by the
    next full reload; ticks keep flowing throughout."""
    a = stack.shard("A")
    d = stack.dispatcher("targeted", "--table-reload-s", "1", "--shard-networks", "127.0.0.1/32")
    client = WsClient(a.ws_url)
    client.subscribe("HR-1")
    reg = registry(stack)
    for raw in (b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe\x00{", b'{"op":"mode","value":"off"}',
                b'{"op":"route","shard":"A","add":[{"x":1}]}'):
        reg.r.publish(reg.channel, raw)
    reg.r.sadd(reg.shards_key(), b"\xff\xfe")
    forged = ShardInfo("EVIL", "127.0.0.2:9", "ws://127.0.0.2:9/ws", now_ms(), now_ms(), 0, 0, 1000, 60000)
    reg.heartbeat(forged, 60_000)
    reg.announce("up", "EVIL")
    wait_for(lambda: d.stats()["registry_changes_rejected"] == 4, what="bad messages rejected")
    wait_for(lambda: d.stats()["shards_refused_address"] > 0, what="forged address refused")
    assert "EVIL" not in d.stats()["shards"] and "EVIL" not in d.stats()["routable_shards"]

    applied = d.stats()["registry_changes_applied"]
    reg.r.publish(reg.channel, b'{"op":"route","shard":"A","add":[],"del":["HR-1"]}')  # well-formed lie
    wait_for(lambda: d.stats()["registry_changes_applied"] > applied, what="the lie applied")
    reloads = d.stats()["registry_reloads"]
    wait_for(lambda: d.stats()["registry_reloads"] > reloads, what="a full reload after it")
    assert d.route("HR-1") == ["A"]  # repaired from the shard's own token set
    produce(producer(stack.kafka.bootstrap), stack.c.topic, [("HR-1", b'{"px":3}')])
    assert json.loads(client.ticks(1)[0])["data"] == {"px": 3}
    assert d.healthy()
