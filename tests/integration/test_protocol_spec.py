"""docs/asyncapi.yaml against a real shard: every message it sends matches its schema, every server
message of the document is seen, and the shardcast.v1 subprotocol is negotiated as documented."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import time

import pytest
import websocket

from shard.codes import ErrorCode
from shard.protocol import SUBPROTOCOL
from shard.token import issue
from tests.integration.helpers import produce, producer, wait_for
from tests.unit.test_asyncapi import SERVER_MESSAGES, matching

pytestmark = pytest.mark.integration
SECRET = secrets.token_urlsafe(32)
DATA_TYPES = ("tick", "snapshot")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ClosedError(Exception):
    """The shard sent a close frame."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Recorder:
    """A blocking WebSocket client (offering shardcast.v1) that keeps every JSON frame it receives."""

    def __init__(self, url: str, seen: list[dict], **options) -> None:
        self.ws = websocket.create_connection(url, timeout=15, subprotocols=[SUBPROTOCOL], **options)
        assert self.ws.getsubprotocol() == SUBPROTOCOL
        self.seen = seen
        self.next_id = 0

    def recv(self, timeout_s: float = 30) -> dict:
        """The next text frame, parsed and recorded (pings are answered by websocket-client)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            op, frame = self.ws.recv_data_frame(True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                raise ClosedError(int.from_bytes(frame.data[:2], "big"))
            if op == websocket.ABNF.OPCODE_TEXT:
                doc = json.loads(frame.data)
                self.seen.append(doc)
                return doc

    def until(self, check, timeout_s: float = 30) -> dict:
        """Read (and record) frames until one satisfies `check`; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            doc = self.recv(max(0.1, deadline - time.monotonic()))
            if check(doc):
                return doc

    def request(self, doc: dict) -> dict:
        """Send `doc` with a fresh id; return the reply echoing it."""
        self.next_id += 1
        self.ws.send(json.dumps({**doc, "id": self.next_id}))
        return self.until(lambda d: d.get("id") == self.next_id)

    def send_raw(self, text: str) -> dict:
        """Send any text; return the next frame that is not data (requests are answered in order)."""
        self.ws.send(text)
        return self.until(lambda d: d.get("type") not in DATA_TYPES)

    def close(self) -> None:
        self.ws.close()


def _token(grant: list[str], ttl_s: float = 600) -> str:
    return issue(SECRET.encode(), grant, ttl_s)


def _jwt_shard(stack, shard_id: str, *flags: str):
    stack.c.env["SHARDCAST_JWT_SECRET"] = SECRET
    return stack.shard(shard_id, "--auth", "jwt", *flags)


def _classify(seen: list[dict]) -> dict[str, int]:
    """How many frames of each server message were seen; fails on a frame matching none or several."""
    counts: dict[str, int] = {}
    for doc in seen:
        names = matching(doc)
        assert len(names) == 1, (doc, names)
        counts[names[0]] = counts.get(names[0], 0) + 1
    return counts


def test_every_server_message_the_shard_sends_matches_the_document_and_all_are_seen(stack):
    """Driving a real --auth jwt shard through every reply, error, data frame and grant change: each
    frame matches exactly one server message schema, and together they cover all of them and every
    error code."""
    sp = _jwt_shard(stack, "s1", "--max-tokens-per-request", "5", "--max-shard-tokens", "4",
                    "--requests-per-s", "2", "--request-burst", "30")
    d = stack.dispatcher()
    seen: list[dict] = []
    c1 = Recorder(sp.ws_url, seen)  # authenticates by message
    assert c1.request({"op": "subscribe", "tokens": ["SPEC-A"]})["code"] == "unauthenticated"
    assert c1.request({"op": "ping"}) == {"type": "pong", "id": c1.next_id}
    assert c1.request({"op": "auth", "token": _token(["SPEC-*"])})["type"] == "authenticated"
    assert c1.request({"op": "subscribe", "tokens": ["SPEC-A", "SPEC-B"]})["type"] == "subscribed"
    wait_for(lambda: d.route("SPEC-A") == d.route("SPEC-B") == ["s1"], what="tokens routed to s1")
    produce(producer(stack.kafka.bootstrap), stack.c.topic,
            [("SPEC-A", b'{"price":1.5}'), ("SPEC-B", b"\x00\xffnot json")])
    got: dict[str, dict] = {}
    while len(got) < 2:
        tick = c1.until(lambda doc: doc["type"] == "tick")
        got[tick["token"]] = tick
    assert got["SPEC-A"]["data"] == {"price": 1.5}
    assert base64.b64decode(got["SPEC-B"]["data_b64"]) == b"\x00\xffnot json"

    c2 = Recorder(f"{sp.ws_url}?token={_token(['*'])}", seen)  # authenticated at the upgrade
    assert c2.request({"op": "subscribe", "tokens": ["SPEC-A"]})["type"] == "subscribed"
    snap = next(doc for doc in seen if doc["type"] == "snapshot")  # sent before the ack
    assert (snap["token"], snap["offset"], snap["data"]) == ("SPEC-A", got["SPEC-A"]["offset"],
                                                              {"price": 1.5})

    hostile = {  # each refused with its code; the connection stays open
        "invalid_json": "{",
        "not_an_object": "[1]",
        "unknown_op": '{"op":"dance"}',
        "bad_request": '{"op":"subscribe"}',
        "invalid_token": '{"op":"subscribe","tokens":["bad token"]}',
        "too_many_tokens": json.dumps({"op": "subscribe", "tokens": [f"SPEC-{i}" for i in range(6)]}),
        "forbidden": '{"op":"subscribe","tokens":["SPEC-C","OTHER-1"]}',
        "capacity": '{"op":"subscribe","tokens":["SPEC-C","SPEC-D","SPEC-E"]}',  # 2 carried + 3 > 4
    }
    for code, text in hostile.items():
        err = c1.send_raw(text)
        assert (err["type"], err["code"]) == ("error", code), err
    assert c1.request({"op": "unsubscribe", "tokens": ["SPEC-B"]})["type"] == "unsubscribed"
    c1.ws.send(json.dumps({"op": "auth", "token": _token(["SPEC-B*"]), "id": "refresh"}))
    control = [c1.until(lambda doc: doc["type"] not in DATA_TYPES) for _ in range(2)]
    assert control[0] == {"type": "unsubscribed", "tokens": ["SPEC-A"], "reason": "grant"}
    assert control[1]["type"] == "authenticated" and control[1]["id"] == "refresh"

    c3 = Recorder(sp.ws_url, seen)  # a flood: 40 pings, unanswered yet, against a burst of 30 at 2/s
    for i in range(40):
        c3.ws.send(json.dumps({"op": "ping", "id": i}))
    replies = [c3.recv() for _ in range(40)]  # one each, in order
    assert {"pong", "error"} == {r["type"] for r in replies}
    assert {r["code"] for r in replies if r["type"] == "error"} == {"rate_limited"}

    counts = _classify(seen)
    assert set(counts) == SERVER_MESSAGES  # no server message of the document left unseen
    assert {e["code"] for e in seen if e["type"] == "error"} == {c.value for c in ErrorCode}
    for c in (c1, c2, c3):
        c.close()


def test_a_resync_snapshot_matches_the_snapshot_message(stack):
    """Records dropped for a frozen shard reach its client as a resync snapshot that matches the
    document's snapshot message (resync true, the latest value)."""
    a = stack.shard("A", "--ingest-window", "1", "--heartbeat-ttl-s", "60")
    # One credit, no stream pings: the first record below holds the only credit while A is frozen,
    # so the rest pile up past the 200-record queue and are dropped (see test_no_silent_loss).
    d = stack.dispatcher("targeted", "--max-poll-records", "100", "--shard-queue-records", "200",
                         "--stream-ping-s", "60")
    seen: list[dict] = []
    client = Recorder(a.ws_url, seen)
    client.request({"op": "subscribe", "tokens": ["RESYNC-1"]})
    wait_for(lambda: d.route("RESYNC-1") == ["A"], what="RESYNC-1 routed to A")
    feed = producer(stack.kafka.bootstrap)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        produce(feed, stack.c.topic, [("RESYNC-1", b'{"s":-1}')])
        wait_for(lambda: d.stats()["shards"]["A"]["in_flight_records"] == 1, what="A's one credit used")
        produce(feed, stack.c.topic, [("RESYNC-1", b'{"s":%d}' % i) for i in range(1000)])
        wait_for(lambda: d.stats()["shards"]["A"]["records_offered"] == 1001, what="all offered to A")
        assert d.stats()["shards"]["A"]["records_dropped"] > 0
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    resync = client.until(lambda doc: doc.get("resync") is True)
    assert matching(resync) == ["snapshot"]
    assert (resync["type"], resync["token"], resync["data"]) == ("snapshot", "RESYNC-1", {"s": 999})
    assert _classify(seen).keys() <= SERVER_MESSAGES
    client.close()


# -- subprotocol negotiation ---------------------------------------------------------------------

def _upgrade(port: int, *header_lines: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send a WebSocket upgrade with extra header lines; (status, headers, body) of the answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = ("GET /ws HTTP/1.1\r\n"
               f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               + "".join(f"{line}\r\n" for line in header_lines) + "\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(n.strip().lower(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines)]
        status = int(status_line.split()[1])
        length = int(dict(headers).get("content-length", 0)) if status != 101 else 0
        while len(body) < length:
            chunk = sock.recv(4096)
            assert chunk, "body cut short"
            body += chunk
    if status == 101:
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert dict(headers)["sec-websocket-accept"] == accept
    return status, headers, body


def _protocols(headers: list[tuple[str, str]]) -> list[str]:
    return [v for n, v in headers if n == "sec-websocket-protocol"]


@pytest.mark.parametrize("lines", [
    ("Sec-WebSocket-Protocol: shardcast.v1",),
    ("Sec-WebSocket-Protocol: chat, shardcast.v1",),
    ("Sec-WebSocket-Protocol: shardcast.v2,shardcast.v1 , chat",),
    ("Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: shardcast.v1"),  # two header lines
])
def test_an_offer_including_shardcast_v1_is_accepted_and_echoed_once(stack, lines):
    """Wherever shardcast.v1 stands among the offered subprotocols, the 101 echoes it, and only it."""
    sp = stack.shard("s1")
    status, headers, _ = _upgrade(sp.ws_port, *lines)
    assert (status, _protocols(headers)) == (101, [SUBPROTOCOL])


def test_no_subprotocol_is_accepted_without_echo(stack):
    """An upgrade offering no subprotocol (plain tools) gets a 101 without Sec-WebSocket-Protocol."""
    sp = stack.shard("s1")
    status, headers, _ = _upgrade(sp.ws_port)
    assert (status, _protocols(headers)) == (101, [])
    status, headers, _ = _upgrade(sp.ws_port, "Sec-WebSocket-Protocol: ")
    assert (status, _protocols(headers)) == (101, [])


@pytest.mark.parametrize("offer", ["shardcast.v2", "shardcast.v10", "chat, xshardcast.v1y"])
def test_an_offer_without_shardcast_v1_is_refused_with_400_naming_it(stack, offer):
    """Only unknown subprotocols (also ours as a substring) get HTTP 400 whose error names
    shardcast.v1; no connection is made."""
    sp = stack.shard("s1")
    status, headers, body = _upgrade(sp.ws_port, f"Sec-WebSocket-Protocol: {offer}")
    assert status == 400 and _protocols(headers) == []
    assert json.loads(body) == {
        "error": f"unsupported subprotocol: this shard speaks {SUBPROTOCOL} (or none)"}
    stats = sp.stats()
    assert (stats["upgrades_refused"], stats["connections_total"]) == (1, 0)


def test_websocket_client_libraries_negotiate_v1_and_talk(stack):
    """websocket-client offering shardcast.v1 gets it and is served; offering only v2 it gets 400."""
    sp = stack.shard("s1")
    ws = websocket.create_connection(sp.ws_url, timeout=15, subprotocols=["chat", SUBPROTOCOL])
    assert ws.getsubprotocol() == SUBPROTOCOL
    ws.send('{"op":"ping","id":1}')
    assert json.loads(ws.recv()) == {"type": "pong", "id": 1}
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(sp.ws_url, timeout=15, subprotocols=["shardcast.v2"])
    assert refused.value.status_code == 400 and SUBPROTOCOL.encode() in refused.value.resp_body
