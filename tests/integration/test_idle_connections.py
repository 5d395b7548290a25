"""Idle clients cost no greenlet: reading is on demand, frames are cut incrementally (shard.wsread)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from urllib.parse import urlparse

import pytest

from bench.procstat import mem_kib
from tests.integration.helpers import WsClient, produce, producer, tick_payload, wait_for
from tests.wsframes import client_frame, server_frames

pytestmark = pytest.mark.integration


def _masked_text(doc: dict) -> bytes:
    return client_frame(0x1, json.dumps(doc).encode())


def _upgrade_request(url: str) -> bytes:
    u = urlparse(url)
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _text_frames_until(sock: socket.socket, want: str, timeout_s: float = 10) -> list[dict]:
    """Read the 101 response and server text frames until one of type `want` (all returned)."""
    sock.settimeout(timeout_s)
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(4096)
    head, raw = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    while True:
        docs = [json.loads(p) for op, p in server_frames(raw) if op == 0x1]
        if any(d.get("type") == want for d in docs):
            return docs
        raw += sock.recv(4096)


def test_idle_clients_hold_no_greenlet_yet_get_every_tick(stack):
    """30 subscribed clients at rest leave no reader or writer greenlet in the shard, and each then
    gets all 5 ticks of its token in order."""
    a = stack.shard("A")
    stack.dispatcher()
    clients = [WsClient(a.ws_url) for _ in range(30)]
    for c in clients:
        c.subscribe("IDLE-1")
    wait_for(lambda: a.stats()["connections"] == 30, what="30 connections")
    wait_for(lambda: (a.stats()["readers_active"], a.stats()["writers_active"]) == (0, 0),
             what="no greenlet serving an idle client")
    produce(producer(stack.kafka.bootstrap), stack.c.topic,
            [("IDLE-1", json.dumps({"i": i}).encode()) for i in range(5)])
    for c in clients:
        got = [json.loads(tick_payload(f, "IDLE-1")[1])["i"] for f in c.ticks(5)]
        assert got == [0, 1, 2, 3, 4]


def test_a_request_split_across_reads_waits_without_a_greenlet_and_is_answered_whole(stack):
    """A ping request whose frame arrives in two parts 0.5 s apart: while half of it is in, no
    greenlet waits for the rest; once whole, it is answered exactly once."""
    a = stack.shard("A")
    client = WsClient(a.ws_url)
    frame = _masked_text({"op": "ping", "id": 7})
    client.ws.sock.sendall(frame[:5])
    time.sleep(0.5)
    assert a.stats()["readers_active"] == 0
    client.ws.sock.sendall(frame[5:])
    assert client.next_control() == {"type": "pong", "id": 7}
    assert client.request({"op": "ping"})["type"] == "pong"  # nothing else came before it


def test_a_subscribe_sent_with_the_upgrade_request_is_served(stack):
    """A client that writes its subscribe in the same packet as the upgrade request (bytes that
    pywsgi's reader takes along with the request) gets its ack: nothing sent early is lost."""
    a = stack.shard("A")
    u = urlparse(a.ws_url)
    with socket.create_connection((u.hostname, u.port)) as sock:
        sock.sendall(_upgrade_request(a.ws_url) + _masked_text({"op": "subscribe", "tokens": ["EARLY"],
                                                                "id": 1}))
        docs = _text_frames_until(sock, "subscribed")
    assert docs[-1] == {"type": "subscribed", "tokens": ["EARLY"], "id": 1}


def test_a_burst_of_500_pings_in_one_write_gets_500_pongs_in_order(stack):
    """500 WebSocket pings sent in one write (more than one read, and more than the 64 messages
    after which a reader yields) are each answered by a pong with the same payload, in order."""
    a = stack.shard("A")
    client = WsClient(a.ws_url)
    client.ws.sock.sendall(b"".join(client_frame(0x9, b"%03d" % n) for n in range(500)))
    pongs = []
    while len(pongs) < 500:
        op, frame = client.ws.recv_data_frame(True)
        assert op == 0xA, op
        pongs.append(frame.data)
    assert pongs == [b"%03d" % n for n in range(500)]
    assert client.request({"op": "ping"})["type"] == "pong"


def test_400_subscribed_clients_cost_the_shard_under_12_kib_each(stack):
    """RSS per connection stays far below the 22-25 KiB a greenlet parked per client cost (about
    6 KiB without one): 400 subscribed clients add under 12 KiB each to the shard's RSS."""
    a = stack.shard("A")
    warm = [WsClient(a.ws_url) for _ in range(20)]  # one-time allocations before the baseline
    for c in warm:
        c.subscribe("RSS-1")
    before = mem_kib(a.proc.pid)["rss_kib"]
    clients = [WsClient(a.ws_url) for _ in range(400)]
    for c in clients:
        c.subscribe("RSS-1")
    wait_for(lambda: a.stats()["connections"] == 420, what="420 connections")
    per_conn_kib = (mem_kib(a.proc.pid)["rss_kib"] - before) / 400
    assert per_conn_kib < 12, per_conn_kib
    assert clients[-1].request({"op": "ping"})["type"] == "pong"


def test_clients_that_reset_or_hang_up_without_a_close_frame_are_released(stack):
    """A client that resets its TCP connection is released; one that shuts its side without a close
    frame gets a 1001 close frame, then EOF; the shard ends with only the healthy client left."""
    a = stack.shard("A")
    healthy = WsClient(a.ws_url)
    resetter, leaver = WsClient(a.ws_url), WsClient(a.ws_url)
    wait_for(lambda: a.stats()["connections"] == 3, what="3 connections")
    resetter.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resetter.ws.sock.close()  # RST
    leaver.ws.sock.shutdown(socket.SHUT_WR)  # FIN, no close frame
    leaver.ws.sock.settimeout(10)
    raw = b""
    while chunk := leaver.ws.sock.recv(4096):
        raw += chunk
    assert server_frames(raw)[-1:] == [(0x8, (1001).to_bytes(2, "big"))]
    wait_for(lambda: a.stats()["connections"] == 1, what="both released")
    assert (a.stats()["readers_active"], a.stats()["writers_active"]) == (0, 0)
    assert healthy.request({"op": "ping"})["type"] == "pong"
