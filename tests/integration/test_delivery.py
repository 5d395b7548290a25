"""End-to-end delivery on real Kafka and Redis: payloads, targeting, shared tokens, order."""

from __future__ import annotations

import base64
import json
import os
import random
import signal

import pytest

from devstack.procs import stop
from tests.integration.helpers import WsClient, produce, producer, registry, tick_payload, wait_for

pytestmark = pytest.mark.integration


def test_client_on_shard_b_gets_its_ticks_with_payload_bytes_unchanged(stack):
    """A client on shard B receives every record of its token, each payload byte for byte."""
    stack.shard("A")
    b = stack.shard("B")
    stack.dispatcher()
    client = WsClient(b.ws_url)
    client.subscribe("TOK-1")
    payloads = [json.dumps({"i": i, "px": 100 + i / 7, "note": "é ✓"}, ensure_ascii=False).encode()
                for i in range(40)]
    payloads.append(b'{ "spaced" :  [1, 2.50, "x"] }')
    binary = [b"\x00\x01binary\xff", b"not json"]
    produce(producer(stack.kafka.bootstrap), stack.c.topic,
            [("TOK-1", p) for p in payloads + binary])
    frames = client.ticks(len(payloads) + len(binary))
    positions = []
    for frame, payload in zip(frames, payloads, strict=False):  # JSON: embedded verbatim
        pos, data = tick_payload(frame, "TOK-1")
        assert data == payload
        positions.append(pos)
    assert positions == sorted(set(positions))  # one partition, offsets strictly increasing
    for frame, payload in zip(frames[len(payloads):], binary, strict=True):  # else base64
        assert base64.b64decode(json.loads(frame)["data_b64"]) == payload


def test_large_payloads_arrive_intact_even_when_they_pile_up(stack):
    """12 MiB of 512 KiB payloads queued for a paused shard arrive intact (batches capped by bytes)."""
    a = stack.shard("A", "--ingest-window", "1", "--heartbeat-ttl-s", "60")
    d = stack.dispatcher()
    client = WsClient(a.ws_url, timeout_s=30)
    client.subscribe("BIG")
    payloads = [json.dumps({"i": i, "blob": chr(65 + i % 26) * (512 * 1024 - 40)}).encode()
                for i in range(24)]
    os.kill(a.proc.pid, signal.SIGSTOP)  # let them pile up in the dispatcher's queue for A
    try:
        produce(producer(stack.kafka.bootstrap), stack.c.topic, [("BIG", x) for x in payloads])
        wait_for(lambda: d.stats()["records_consumed"] == len(payloads), what="consumed")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    frames = client.ticks(len(payloads), timeout_s=60)
    for frame, payload in zip(frames, payloads, strict=True):
        assert tick_payload(frame, "BIG")[1] == payload
    assert d.stats()["shards"]["A"]["connects"] == 1  # no stream broke on an oversized message


def test_targeted_mode_sends_nothing_to_shards_without_subscribers(stack):
    """Targeted: only the subscribed shard receives records; the others' counters stay at zero."""
    a = stack.shard("A")
    b = stack.shard("B")
    c = stack.shard("C")
    d = stack.dispatcher("targeted")
    client = WsClient(a.ws_url)
    client.subscribe("ONLY-A")
    produce(producer(stack.kafka.bootstrap), stack.c.topic,
            [("ONLY-A", b'{"n":%d}' % i) for i in range(200)] + [("NOBODY", b"{}")] * 50)
    assert len(client.ticks(200)) == 200
    wait_for(lambda: d.stats()["records_consumed"] == 250, what="dispatcher consumed all")
    assert a.stats()["records_received"] == 200
    assert b.stats()["records_received"] == 0 and b.stats()["batches_received"] == 0
    assert c.stats()["records_received"] == 0 and c.stats()["batches_received"] == 0
    st = d.stats()
    assert st["deliveries"] == 200 and st["records_unrouted"] == 50


def test_broadcast_mode_sends_every_record_to_every_shard(stack):
    """Broadcast (the baseline): every live shard receives every record, wanted or not."""
    shards = [stack.shard(s) for s in ("A", "B", "C")]
    d = stack.dispatcher("broadcast")
    client = WsClient(shards[0].ws_url)
    client.subscribe("T1")
    produce(producer(stack.kafka.bootstrap), stack.c.topic,
            [("T1", b'{"n":%d}' % i) for i in range(100)] + [("T2", b"{}")] * 100)
    assert len(client.ticks(100)) == 100

    def all_received():
        return all(s.stats()["records_received"] == 200 for s in shards)

    wait_for(all_received, what="every shard received all 200")
    assert shards[1].stats()["records_no_subscriber"] == 200
    assert shards[0].stats()["records_no_subscriber"] == 100
    assert d.stats()["deliveries"] == 600


def test_shared_token_reaches_both_shards_until_last_subscriber_leaves(stack):
    """Two shards sharing a token both get it; after B's last subscriber leaves, B gets none."""
    a = stack.shard("A")
    b = stack.shard("B")
    d = stack.dispatcher()
    reg = registry(stack)
    ca, cb1, cb2 = WsClient(a.ws_url), WsClient(b.ws_url), WsClient(b.ws_url)
    for c in (ca, cb1, cb2):
        c.subscribe("SHARED")
    assert reg.route_of("SHARED") == {"A", "B"}
    p = producer(stack.kafka.bootstrap)
    produce(p, stack.c.topic, [("SHARED", b'{"n":%d}' % i) for i in range(20)])
    for c in (ca, cb1, cb2):
        assert len(c.ticks(20)) == 20
    cb1.unsubscribe("SHARED")
    assert reg.route_of("SHARED") == {"A", "B"}  # cb2 still holds it on B
    cb2.close()  # the last subscriber on B disconnects without unsubscribing
    wait_for(lambda: reg.route_of("SHARED") == {"A"}, what="B removed from route set")
    wait_for(lambda: d.route("SHARED") == ["A"], what="dispatcher table updated")
    produce(p, stack.c.topic, [("SHARED", b'{"n":%d}' % i) for i in range(20, 40)])
    assert len(ca.ticks(20)) == 20  # so all 20 have been routed: nothing more for B, exactly
    sb = d.stats()["shards"]["B"]
    assert (sb["records_offered"], sb["records_sent"], b.stats()["records_received"]) == (20, 20, 20)
    assert d.stats()["shards"]["A"]["records_offered"] == 40
    assert "SHARED" not in {t.decode() for t in reg.r.smembers(reg.tokens_key("B"))}
    ca.unsubscribe("SHARED")
    wait_for(lambda: not reg.r.exists(reg.route_key("SHARED")), what="route key removed")


def test_per_token_order_for_10000_records_over_3_partitions(stack):
    """10,000 records of 30 tokens over 3 partitions arrive in per-token order with no gaps."""
    a = stack.shard("A", "--outbox-frames", "20000")
    b = stack.shard("B", "--outbox-frames", "20000")
    stack.dispatcher()
    tokens = [f"ORD-{i}" for i in range(30)]
    c1, c2 = WsClient(a.ws_url), WsClient(b.ws_url)
    c1.subscribe(*tokens)
    c2.subscribe(*tokens[::2])
    rng = random.Random(3)
    seq = dict.fromkeys(tokens, 0)
    items = []
    for _ in range(10_000):
        t = rng.choice(tokens)
        seq[t] += 1
        items.append((t, b'{"s":%d}' % seq[t]))
    p = producer(stack.kafka.bootstrap)
    assert len(p.partitions_for(stack.c.topic)) == 3
    produce(p, stack.c.topic, items)
    for client, wanted in ((c1, tokens), (c2, tokens[::2])):
        expected = sum(seq[t] for t in wanted)
        seen = dict.fromkeys(wanted, 0)
        for frame in client.ticks(expected, timeout_s=120):
            doc = json.loads(frame)
            assert doc["data"]["s"] == seen[doc["token"]] + 1, "out of order or gap"
            seen[doc["token"]] = doc["data"]["s"]
        assert seen == {t: seq[t] for t in wanted}


def test_two_dispatchers_share_partitions_and_hand_over_on_stop(stack):
    """Two dispatchers in one group split the partitions; when one stops the other takes over."""
    a = stack.shard("A")
    d1 = stack.dispatcher(dispatcher_id="d1")
    d2 = stack.dispatcher(dispatcher_id="d2")
    wait_for(lambda: d1.healthy() and d2.healthy(), timeout_s=30, interval_s=0.2,
             what="both dispatchers hold partitions")
    tokens = [f"MD-{i}" for i in range(30)]
    client = WsClient(a.ws_url)
    client.subscribe(*tokens)
    p = producer(stack.kafka.bootstrap)
    items = [(tokens[i % 30], b'{"s":%d}' % (i // 30)) for i in range(3000)]
    produce(p, stack.c.topic, items)
    seen = dict.fromkeys(tokens, -1)
    for frame in client.ticks(3000, timeout_s=60):
        doc = json.loads(frame)
        assert doc["data"]["s"] == seen[doc["token"]] + 1
        seen[doc["token"]] = doc["data"]["s"]
    s1, s2 = d1.stats()["records_consumed"], d2.stats()["records_consumed"]
    assert s1 + s2 == 3000 and s1 > 0 and s2 > 0  # each record once, both working
    stop(d1.proc)
    produce(p, stack.c.topic, [(t, b'{"s":100}') for t in tokens])
    got = {json.loads(f)["token"]: json.loads(f)["data"]["s"] for f in client.ticks(30, timeout_s=60)}
    assert got == dict.fromkeys(tokens, 100)  # d2 now serves every partition, nothing replayed
