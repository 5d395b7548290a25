"""Slow clients, offset commits across a dispatcher restart, and a Redis outage."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import termios
import threading
import time

import pytest
import redis
import websocket

from devstack.procs import (
    free_port,
    http_json,
    port_open,
    python_cmd,
    read_ports_file,
    spawn,
    stop,
    wait_until,
)
from devstack.redis_server import RedisServer
from tests.integration.helpers import (
    TickReader,
    WsClient,
    batch_producer,
    committed_equals_end,
    produce,
    producer,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_slow_client_is_closed_4008_and_fast_client_gets_everything(stack):
    """A client that stops reading is closed with 4008; a fast one on the same token misses nothing."""
    # A bounded send buffer: the shard can always make room for the close frame (an autotuned
    # one may be past net.core.wmem_max). max_behind_s far beyond a fast client's hiccups on a
    # loaded machine (stalled half as long, a reader is conflated), and a write timeout beyond it
    # (a stuck write would drop the slow client bare, without its 4008).
    a = stack.shard("A", "--outbox-frames", "500", "--max-behind-s", "10", "--client-sndbuf-bytes", "65536",
                    "--write-timeout-s", "600")
    stack.dispatcher()
    slow = websocket.create_connection(
        a.ws_url, timeout=30, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    slow.send(json.dumps({"op": "subscribe", "tokens": ["HOT"], "id": 1}))
    assert json.loads(slow.recv())["type"] == "subscribed"
    fast = WsClient(a.ws_url)
    fast.subscribe("HOT")
    n = 4000
    blob = "x" * 4000
    p = producer(stack.kafka.bootstrap)
    reader = TickReader(fast, n)
    for start in range(0, n, 200):  # ~8 MB/s: a rate a reading client keeps up with
        produce(p, stack.c.topic,
                [("HOT", json.dumps({"s": i, "pad": blob}).encode()) for i in range(start, start + 200)])
        wait_for(lambda s=start: len(reader.got) >= s + 200 or reader.errors, timeout_s=30,
                 what="fast client's ticks")
    assert reader.join(30) == list(range(n))
    # Found behind also with no tick left to push: the shard measures while its writer waits.
    wait_for(lambda: a.stats()["clients_overflowed"] == 1, timeout_s=60, what="slow client closed")
    wait_for(lambda: a.stats()["connections"] == 1, what="slow client released")
    code = None
    while code is None:  # reading at last, the slow client finds its buffered ticks, then the close frame
        op, frame = slow.recv_data_frame(True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(frame.data[:2], "big")
    assert code == 4008
    assert a.stats()["clients_overflowed"] == 1


def test_client_briefly_behind_is_conflated_not_closed(stack):
    """A client that pauses gets the newest value of each token, in order, and stays connected."""
    a = stack.shard("A", "--outbox-frames", "100", "--max-behind-s", "30")
    stack.dispatcher()
    tokens = ["CF-1", "CF-2", "CF-3"]
    ws = websocket.create_connection(
        a.ws_url, timeout=30, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    ws.send(json.dumps({"op": "subscribe", "tokens": tokens, "id": 1}))
    assert json.loads(ws.recv())["type"] == "subscribed"
    n = 3000
    blob = "y" * 2000
    produce(producer(stack.kafka.bootstrap), stack.c.topic,
            [(tokens[i % 3], json.dumps({"s": i, "pad": blob}).encode()) for i in range(n)])
    wait_for(lambda: a.stats()["frames_conflated"] > 0, what="conflation")
    seen: dict[str, list[int]] = {t: [] for t in tokens}
    while not all(seen[t] and seen[t][-1] >= n - 3 for t in tokens):
        doc = json.loads(ws.recv())
        seen[doc["token"]].append(doc["data"]["s"])
    for t in tokens:
        assert seen[t] == sorted(set(seen[t]))  # per-token order, no repeats
    assert sum(len(v) for v in seen.values()) < n  # stale values were skipped
    ws.send(json.dumps({"op": "ping", "id": 2}))
    assert json.loads(ws.recv())["type"] == "pong"  # still connected
    assert a.stats()["clients_overflowed"] == 0


def _unread_bytes(ws: websocket.WebSocket) -> int:
    """Bytes waiting in a client socket's kernel receive buffer."""
    return struct.unpack("i", fcntl.ioctl(ws.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.mark.parametrize("ticks_per_s", [20, 1000])
def test_client_that_stops_reading_is_closed_on_time_at_any_rate(stack, ticks_per_s):
    """At 20 KB/s or 1 MB/s a client that stops reading is closed with 4008 for being behind (its
    data in the shard's socket counts; the write timeout, far beyond the test, cannot be what
    closes it); a reader gets every tick. How long after its receive buffer filled is printed:
    the chaos suite's slow_client fault reports that delay."""
    # Half of max_behind_s stalled conflates a client: long enough for the reader, which reads in
    # this thread between produce calls, to never be behind on a loaded machine.
    max_behind_s = 6.0
    a = stack.shard("A", "--max-behind-s", str(max_behind_s), "--client-sndbuf-bytes", "65536",
                    "--write-timeout-s", "600")
    stack.dispatcher()
    stopped = websocket.create_connection(
        a.ws_url, timeout=30, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    stopped.send(json.dumps({"op": "subscribe", "tokens": ["STOP"], "id": 1}))
    assert json.loads(stopped.recv())["type"] == "subscribed"  # from here on it reads nothing
    reader = WsClient(a.ws_url)
    reader.subscribe("STOP")
    p = producer(stack.kafka.bootstrap)
    pad = "z" * 1000
    per_batch = max(1, ticks_per_s // 20)  # a batch every 50 ms
    got: list[int] = []
    unread, filled_at, closed_at = 0, 0.0, 0.0
    start = time.monotonic()
    sent = 0
    while not closed_at:
        batch = [("STOP", json.dumps({"s": s, "pad": pad}).encode()) for s in range(sent, sent + per_batch)]
        produce(p, stack.c.topic, batch)
        sent += per_batch
        got += [json.loads(f)["data"]["s"] for f in reader.ticks(per_batch)]
        now = time.monotonic()
        if _unread_bytes(stopped) > unread:  # its receive buffer is still filling
            unread, filled_at = _unread_bytes(stopped), now
        st = a.stats()
        if st["clients_overflowed"] == 1 and st["connections"] == 1:
            closed_at = now
        assert now - start < 90, f"stopped client still connected: {st}"
        time.sleep(max(0.0, start + sent / ticks_per_s - time.monotonic()))  # pace the feed
    behind_s = closed_at - filled_at
    print(f"{ticks_per_s * len(pad) // 1000} KB/s: receive buffer full ({unread} B) "
          f"{filled_at - start:.2f} s after the first tick, closed {behind_s:.2f} s later "
          f"(max_behind_s={max_behind_s}), frames_conflated={st['frames_conflated']}")
    assert got == list(range(sent))
    code = None
    while code is None:  # reading now, it finds its buffered ticks, whole, then the close frame
        op, frame = stopped.recv_data_frame(True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(frame.data[:2], "big")
        else:
            assert json.loads(frame.data)["type"] == "tick"
    assert code == 4008
    if ticks_per_s >= 1000:
        assert st["frames_conflated"] > 0  # its queue filled before it was closed


def test_subscriber_gets_last_value_snapshot_at_once(stack):
    """A new subscriber gets the token's last value as a snapshot, from dispatcher or shard."""
    a = stack.shard("A")
    b = stack.shard("B")
    d = stack.dispatcher()
    p = producer(stack.kafka.bootstrap)
    produce(p, stack.c.topic, [("SNAP", b'{"v":%d}' % i) for i in range(5)])
    wait_for(lambda: d.stats()["records_consumed"] == 5, what="consumed")

    def first_value(client: WsClient) -> tuple[str, dict]:
        """Subscribe; return the first data frame, whether it comes before or after the ack."""
        client.ws.send(json.dumps({"op": "subscribe", "tokens": ["SNAP"], "id": 1}))
        client.ws.settimeout(10)
        acked, data = False, None
        while not (acked and data):
            doc = json.loads(client.ws.recv())
            acked = acked or doc["type"] == "subscribed"
            data = data or (doc if doc["type"] in ("snapshot", "tick") else None)
        return data["type"], data["data"]

    assert first_value(WsClient(a.ws_url)) == ("snapshot", {"v": 4})  # sent by the dispatcher
    assert first_value(WsClient(b.ws_url)) == ("snapshot", {"v": 4})
    later = WsClient(a.ws_url)  # A already carries SNAP: its own last value
    assert first_value(later) == ("snapshot", {"v": 4})
    assert d.stats()["snapshots_sent"] == 2
    produce(p, stack.c.topic, [("SNAP", b'{"v":5}')])
    assert json.loads(later.ticks(1)[0])["data"] == {"v": 5}


def test_offsets_are_committed_and_a_restarted_dispatcher_resumes_after_them(stack):
    """Handed-on records are committed; a restarted dispatcher delivers only what came after."""
    a = stack.shard("A")
    d = stack.dispatcher()
    client = WsClient(a.ws_url)
    client.subscribe("OFF")
    p = producer(stack.kafka.bootstrap)
    produce(p, stack.c.topic, [("OFF", b'{"n":%d}' % i) for i in range(100)])
    assert len(client.ticks(100)) == 100
    group = f"g-{stack.c.namespace}"
    wait_for(lambda: committed_equals_end(stack.kafka.bootstrap, group, stack.c.topic),
             timeout_s=15, interval_s=0.3, what="offsets committed")
    stop(d.proc)
    stack.dispatcher()
    produce(p, stack.c.topic, [("OFF", b'{"n":%d}' % i) for i in range(100, 110)])
    got = [json.loads(f)["data"]["n"] for f in client.ticks(10)]
    assert got == list(range(100, 110))  # nothing before 100 came again
    assert a.stats()["records_received"] == 110


def test_redis_outage_falls_back_to_broadcast_then_recovers(stack, workdir):
    """With Redis gone ticks still flow (broadcast); when it returns, routing is targeted again."""
    own = RedisServer(workdir / f"redis-{stack.c.namespace}").start()  # a free port, kept on restart
    stack.c.redis_url = own.url
    try:
        a = stack.shard("A", "--heartbeat-s", "0.5", "--heartbeat-ttl-s", "3")
        b = stack.shard("B", "--heartbeat-s", "0.5", "--heartbeat-ttl-s", "3")
        d = stack.dispatcher()
        client = WsClient(a.ws_url)
        client.subscribe("RR")
        p = producer(stack.kafka.bootstrap)
        produce(p, stack.c.topic, [("RR", b'{"n":0}')])
        assert len(client.ticks(1)) == 1
        assert b.stats()["records_received"] == 0

        own.stop()
        wait_for(lambda: not d.stats()["registry_healthy"], what="dispatcher saw Redis go")
        # One record batch: the dispatcher polls the 10 records at once, so broadcasts once.
        produce(batch_producer(stack.kafka.bootstrap), stack.c.topic,
                [("RR", b'{"n":%d}' % i) for i in range(1, 11)])
        assert [json.loads(f)["data"]["n"] for f in client.ticks(10)] == list(range(1, 11))
        wait_for(lambda: b.stats()["records_received"] == 10, what="broadcast fallback reached B")
        assert d.stats()["fallback_batches"] == 1

        own.start()  # same port, empty data: shards must re-register themselves
        wait_for(lambda: d.stats()["registry_healthy"] and d.route("RR") == ["A"], timeout_s=20,
                 what="targeted routing restored")
        assert redis.Redis.from_url(own.url).sismember(f"{stack.c.namespace}:route:RR", "A")
        produce(p, stack.c.topic, [("RR", b'{"n":11}')])
        assert json.loads(client.ticks(1)[0])["data"] == {"n": 11}  # routed, so B's count is final:
        assert d.stats()["shards"]["B"]["records_offered"] == 10  # the fallback's 10, nothing since
        assert b.stats()["records_received"] == 10
        assert d.stats()["fallback_batches"] == 1
    finally:
        stack.close()
        own.stop()


def test_frozen_shard_backs_up_only_its_own_stream_then_is_resynced(stack):
    """A frozen shard (SIGSTOP) trims only its own bounded queue; others get every record; its
    clients then get what was in flight, then the latest value marked resync, never a silent gap."""
    a = stack.shard("A", "--ingest-window", "2", "--heartbeat-ttl-s", "60")
    b = stack.shard("B")
    d = stack.dispatcher("targeted", "--shard-queue-records", "5000")
    ca, cb = WsClient(a.ws_url), WsClient(b.ws_url)
    ca.subscribe("FZ")
    cb.subscribe("FZ")
    n = 20_000
    got: list[int] = []
    # B's client reads as the ticks come, as a live client does: one that stops reading for
    # half of --max-behind-s is (rightly) conflated, which a slow producer on a loaded machine caused.
    reader = threading.Thread(target=lambda: got.extend(
        json.loads(f)["data"]["s"] for f in cb.ticks(n, timeout_s=120)), daemon=True)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        reader.start()
        produce(producer(stack.kafka.bootstrap), stack.c.topic,
                [("FZ", b'{"s":%d}' % i) for i in range(n)])
        reader.join(130)
        assert got == list(range(n))  # B is not held back by A
        wait_for(lambda: d.stats()["records_consumed"] == n, what="all consumed")
        sa = d.stats()["shards"]["A"]
        assert sa["in_flight_batches"] == 2
        assert sa["queue_depth"] + sa["in_flight_records"] == 5000  # unacked records count too
        assert sa["records_dropped"] > 0
        assert sa["records_sent"] + sa["queue_depth"] + sa["records_dropped"] == n
        assert d.stats()["shards"]["B"]["records_dropped"] == 0
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    sent = sa["records_sent"]
    frames = [json.loads(f) for f in ca.data_frames(sent + 1, timeout_s=30)]
    assert [f["data"]["s"] for f in frames[:sent]] == list(range(sent))  # in flight before the drop
    assert all(f["type"] == "tick" for f in frames[:sent])
    last = frames[sent]
    assert last["type"] == "snapshot" and last["resync"] is True and last["data"]["s"] == n - 1
    # The queue's older records came after the resync and were dropped by position.
    wait_for(lambda: a.stats()["duplicates_dropped"] == sa["queue_depth"], what="stale queue dropped")
    assert d.stats()["shards"]["A"]["resyncs_sent"] == 1


def test_shard_started_before_redis_registers_once_redis_is_up(stack, workdir):
    """A shard whose Redis is not up yet waits (no crash) and registers as soon as Redis starts."""
    # The shard must know the Redis address before Redis runs: the one port chosen ahead (if
    # something takes it meanwhile, own.start() fails loudly rather than moving elsewhere).
    port = free_port()
    own = RedisServer(workdir / f"redis-late-{port}", port)
    ports_file, log = stack.c.logdir / "shard-late.ports.json", stack.c.logdir / "shard-late.log"
    cmd = python_cmd("-m", "shard", "--id", "A", "--ws-port", "0", "--grpc-port", "0", "--ports-file",
                     str(ports_file), "--redis-url", own.url, "--namespace", stack.c.namespace)
    proc = spawn(cmd, log)
    try:
        ws_port = read_ports_file(ports_file, 30, "late shard", proc)["ws_port"]  # bound before Redis
        # It tried Redis, failed, and tries again: waiting, not crashed.
        wait_for(lambda: log.read_text().count("registry unreachable at start, retrying") >= 2,
                 timeout_s=30, what="the shard retrying Redis")
        assert proc.poll() is None
        assert not port_open("127.0.0.1", ws_port)  # bound, not listening: no client waits on it
        own.start()
        wait_until(lambda: http_json(f"http://127.0.0.1:{ws_port}/healthz")[0] == 200, 30,
                   "late shard healthy", proc=proc)
        assert redis.Redis.from_url(own.url).exists(f"{stack.c.namespace}:shard:A")
    finally:
        stop(proc)
        own.stop()
