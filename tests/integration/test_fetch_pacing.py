"""Fetch pacing on the real broker: records that arrive within a linger travel as one poll and one
batch; after a lull the dispatcher answers at the first record again (dispatcher/fetch_pacing.py)."""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers import WsClient, batch_producer, produce, wait_for

pytestmark = pytest.mark.integration
TOKEN = "PACE-1"
LINGER_MS = 4000  # far longer than the test needs to produce: the gathering cannot be a race


def _tick(i: int) -> list[tuple[str, bytes]]:
    return [(TOKEN, json.dumps({"i": i}).encode())]


def test_records_within_a_linger_reach_the_shard_as_one_batch_and_a_lull_ends_the_gathering(stack):
    """Idle → first record delivered and fetches go busy; five records produced one by one (five
    record batches) reach the shard in at most two gRPC batches (the fetch already sent when the
    mode changed still answers at once); after two lingers without records fetches are idle again."""
    a = stack.shard("A")
    d = stack.dispatcher("targeted", "--kafka-fetch-linger-ms", str(LINGER_MS))
    assert d.stats()["fetch_mode"] == "idle"
    client = WsClient(a.ws_url)
    client.subscribe(TOKEN)
    prod = batch_producer(stack.kafka.bootstrap)  # each produce() call: its own record batch
    produce(prod, stack.c.topic, _tick(0))
    assert json.loads(client.ticks(1)[0])["data"] == {"i": 0}
    wait_for(lambda: d.stats()["fetch_mode"] == "busy", what="fetches gathering")
    before = a.stats()["batches_received"]
    for i in range(1, 6):
        produce(prod, stack.c.topic, _tick(i))
    assert [json.loads(t)["data"]["i"] for t in client.ticks(5)] == [1, 2, 3, 4, 5]
    assert a.stats()["batches_received"] - before <= 2
    wait_for(lambda: d.stats()["fetch_mode"] == "idle", timeout_s=30, what="a lull of two lingers")
    assert d.stats()["fetch_mode_switches"] == 2
    produce(prod, stack.c.topic, _tick(6))
    assert json.loads(client.ticks(1)[0])["data"] == {"i": 6}
    assert "no fetcher config" not in d.log.read_text()  # the pinned kafka-python takes the settings
    prod.close()
