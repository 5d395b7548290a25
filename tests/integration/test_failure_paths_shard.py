"""Failure paths at the shard's edge on the real servers: the write-timeout hang-up, protocol
violations and their close codes, and the values (not just the presence) of the loop-lag, stall
and latency histograms."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request

import pytest
import websocket
from kafka import KafkaProducer

from tests.integration.helpers import TickReader, WsClient, produce, producer, wait_for
from tests.wsframes import client_frame, server_frames

pytestmark = pytest.mark.integration


# -- the write-timeout hang-up --------------------------------------------------------------

def _read_to_end(sock: socket.socket, timeout_s: float = 15) -> tuple[bytes, str]:
    """Everything the server sent until it closed the connection: (bytes, 'eof' or 'reset'), or
    what came within `timeout_s` and 'open' when it did not close."""
    sock.settimeout(timeout_s)
    raw = b""
    try:
        while chunk := sock.recv(65536):
            raw += chunk
    except ConnectionResetError:
        return raw, "reset"
    except TimeoutError:
        return raw, "open"
    return raw, "eof"


def test_a_client_that_stops_reading_is_hung_up_at_the_write_timeout_and_counted(stack):
    """With --write-timeout-s 1 (and --max-behind-s far away, which the shard logs as advice) a client
    whose socket stays full is reset without a close frame and counted once; a reader on the same
    token gets every tick."""
    a = stack.shard("A", "--write-timeout-s", "1", "--max-behind-s", "120", "--client-sndbuf-bytes", "65536")
    stack.dispatcher()
    stuck = websocket.create_connection(
        a.ws_url, timeout=30, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    stuck.send(json.dumps({"op": "subscribe", "tokens": ["WT"], "id": 1}))
    assert json.loads(stuck.recv())["type"] == "subscribed"  # from here on it reads nothing
    reader = WsClient(a.ws_url)
    reader.subscribe("WT")
    n = 400
    ticks = TickReader(reader, n)
    pad = "w" * 4000
    p = producer(stack.kafka.bootstrap)
    for start in range(0, n, 50):  # 1.6 MB in all: far beyond both sockets' buffers
        produce(p, stack.c.topic, [("WT", json.dumps({"s": i, "pad": pad}).encode())
                                   for i in range(start, start + 50)])
        wait_for(lambda s=start: len(ticks.got) >= s + 50 or ticks.errors, timeout_s=30,
                 what="the reader's ticks")
    assert ticks.join(30) == list(range(n))
    wait_for(lambda: a.stats()["connections"] == 1, timeout_s=30, what="the stuck client hung up")
    st = a.stats()
    assert (st["clients_write_timeout"], st["clients_overflowed"], st["frames_conflated"]) == (1, 0, 0)
    raw, end = _read_to_end(stuck.sock)
    assert end in ("reset", "eof") and all(op != 0x8 for op, _ in server_frames(raw))  # no close frame
    assert a.stats()["clients_write_timeout"] == 1
    # The shard named this setting as advice at start-up (shard.config.advisories).
    assert "config: --max-behind-s (120) is not below --write-timeout-s (1)" in a.log.read_text()


# -- close codes for protocol violations ----------------------------------------------------

PING = b'{"op":"ping"}'
VIOLATIONS = {
    "text that is not UTF-8": (client_frame(0x1, b'{"op":"ping","x":"\xff"}'), 1007),
    "a reserved bit set": (client_frame(0x1, PING, rsv=0x40), 1002),
    "an unmasked frame": (client_frame(0x1, PING, masked=False), 1002),
    "an unknown opcode": (client_frame(0x3, PING), 1002),
    "a fragmented ping": (client_frame(0x9, b"hi", fin=False), 1002),
    "a ping over 125 bytes": (client_frame(0x9, b"p" * 126), 1002),
    "a fragmented text message": (client_frame(0x1, PING, fin=False), 1003),
    "a continuation frame first": (client_frame(0x0, PING), 1003),
}


def test_protocol_violations_close_with_their_codes_and_the_shard_serves_on(stack):
    """Each violation, sent on a fresh raw connection, gets exactly its close code (1007, 1002 or
    1003) as its only frame, then the shard hangs up; no error frame, no pong; others unaffected."""
    a = stack.shard("A")
    codes = {}
    for name, (frame, _) in VIOLATIONS.items():
        ws = websocket.create_connection(a.ws_url, timeout=15)
        ws.sock.sendall(frame)
        raw, end = _read_to_end(ws.sock, timeout_s=10)
        codes[name] = [(op, int.from_bytes(data[:2], "big")) for op, data in server_frames(raw)], end
        ws.close()
    assert codes == {name: ([(0x8, code)], "eof") for name, (_, code) in VIOLATIONS.items()}
    wait_for(lambda: a.stats()["connections"] == 0, what="every violator released")
    st = a.stats()
    assert (st["connections_total"], st["errors_sent"]) == (len(VIOLATIONS), 0)
    assert WsClient(a.ws_url).request({"op": "ping"})["type"] == "pong"


# -- metric values ----------------------------------------------------------------------------

def test_a_stopped_shards_loop_lag_is_counted_as_lag_not_as_its_own_stall(stack):
    """SIGSTOP for 1.5 s: exactly one probe wakes more than 1 s late (the +Inf lag bucket), but the
    loop ran no code meanwhile, so no stall reaches 1 s; /metrics shows the same buckets."""
    a = stack.shard("A")
    before = a.stats()
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the fault itself: the process does not run at all
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    after = wait_for(lambda: (s := a.stats())["loop_lag_counts"][-1] > before["loop_lag_counts"][-1] and s,
                     what="the late probe counted")[0]
    assert after["loop_lag_counts"][-1] == before["loop_lag_counts"][-1] + 1
    assert after["loop_lag_max_s"] > 1.0 and after["loop_stall_max_s"] < 1.0
    assert after["loop_stall_counts"][-1] == before["loop_stall_counts"][-1]
    text = _scrape(a.ws_port)
    lag_inf = _sample(text, 'shardcast_shard_loop_lag_seconds_bucket{le="+Inf"}')
    lag_1s = _sample(text, 'shardcast_shard_loop_lag_seconds_bucket{le="1.0"}')
    assert lag_inf - lag_1s == after["loop_lag_counts"][-1]  # the top bucket, as exposed


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}")


def test_consume_and_delivery_latency_count_each_record_at_its_age(stack):
    """5 records stamped 60 s ago land in the +Inf bucket of both the dispatcher's consume latency and
    the shard's delivery latency; 3 fresh ones do not; sums are at least the stamped ages."""
    a = stack.shard("A")
    d = stack.dispatcher()
    client = WsClient(a.ws_url)
    client.subscribe("AGE")
    p = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap, acks=1)
    old_ms = int(time.time() * 1000) - 60_000
    for i in range(5):
        p.send(stack.c.topic, key=b"AGE", value=b'{"old":%d}' % i, timestamp_ms=old_ms)
    p.flush(30)
    assert len(client.ticks(5)) == 5
    for i in range(3):
        p.send(stack.c.topic, key=b"AGE", value=b'{"new":%d}' % i)
    p.flush(30)
    assert len(client.ticks(3)) == 3
    p.close()
    ds = wait_for(lambda: (s := d.stats())["records_consumed"] == 8 and s, what="consumed")[0]
    assert ds["consume_latency_counts"][-1] == 5 and sum(ds["consume_latency_counts"]) == 8
    wait_for(lambda: sum(a.stats()["delivery_latency_counts"]) == 8, what="every write timed")
    assert a.stats()["delivery_latency_counts"][-1] == 5
    dm, am = _scrape(d.http_port), _scrape(a.ws_port)
    assert _sample(dm, "shardcast_dispatcher_consume_latency_seconds_count") == 8
    assert _sample(dm, 'shardcast_dispatcher_consume_latency_seconds_bucket{le="10.0"}') == 3
    assert _sample(dm, "shardcast_dispatcher_consume_latency_seconds_sum") >= 5 * 60
    assert _sample(am, 'shardcast_shard_delivery_latency_seconds_bucket{le="10.0"}') == 3
    assert _sample(am, "shardcast_shard_delivery_latency_seconds_sum") >= 5 * 60
