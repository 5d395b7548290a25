"""Client protocol parsing and frame encoding (pure, no network)."""

import base64
import json
import struct

import pytest

from common.records import Record
from shard.codes import ErrorCode
from shard.protocol import (
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    ack_frame,
    close_frame,
    error_frame,
    parse_request,
    snapshot_frame,
    tick_frame,
    ws_frame,
)


def _payload(frame: bytes) -> bytes:
    """Strip the server frame header built by ws_frame."""
    n = frame[1] & 0x7F
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]


def test_subscribe_parses_tokens_and_id():
    """A subscribe request yields its de-duplicated tokens and echoes the id."""
    req = parse_request('{"op":"subscribe","tokens":["A","B","A"],"id":7}', 10)
    assert req == Subscribe(("A", "B"), 7)


def test_unsubscribe_and_ping_parse():
    """Unsubscribe and ping are recognised with their ids."""
    assert parse_request('{"op":"unsubscribe","tokens":["X"]}', 10) == Unsubscribe(("X",), None)
    assert parse_request('{"op":"ping","id":"abc"}', 10) == Ping("abc")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", ErrorCode.INVALID_JSON),
        ("[1,2]", ErrorCode.NOT_AN_OBJECT),
        ('"str"', ErrorCode.NOT_AN_OBJECT),
        ('{"op":"dance"}', ErrorCode.UNKNOWN_OP),
        ('{"op":5}', ErrorCode.BAD_REQUEST),
        ('{"tokens":["A"]}', ErrorCode.BAD_REQUEST),
        ('{"op":"subscribe"}', ErrorCode.BAD_REQUEST),
        ('{"op":"subscribe","tokens":"A"}', ErrorCode.BAD_REQUEST),
        ('{"op":"subscribe","tokens":[]}', ErrorCode.BAD_REQUEST),
        ('{"op":"subscribe","tokens":[1]}', ErrorCode.BAD_REQUEST),
        ('{"op":"subscribe","tokens":["has space"]}', ErrorCode.INVALID_TOKEN),
        ('{"op":"subscribe","tokens":["' + "x" * 65 + '"]}', ErrorCode.INVALID_TOKEN),
        ('{"op":"subscribe","tokens":["A","B","C","D"]}', ErrorCode.TOO_MANY_TOKENS),
        ('{"op":"ping","id":true}', ErrorCode.BAD_REQUEST),
        ('{"op":"ping","id":{"a":1}}', ErrorCode.BAD_REQUEST),
    ],
)
def test_bad_requests_get_stable_codes(text, code):
    """Each kind of malformed request maps to its documented error code."""
    req = parse_request(text, 3)
    assert isinstance(req, ProtocolError)
    assert req.code == code


def test_error_keeps_request_id():
    """An error for a request with an id carries that id back."""
    err = parse_request('{"op":"nope","id":9}', 3)
    doc = json.loads(_payload(error_frame(err)))
    assert doc == {"type": "error", "code": "unknown_op", "message": "unknown op 'nope'", "id": 9}


def test_tick_frame_embeds_json_payload_verbatim():
    """A JSON payload's exact bytes (whitespace, key order, unicode) appear inside the frame."""
    payload = '{"b": 1,  "a": [1.50, "é"]}'.encode()
    frame = tick_frame(Record("BTC-USD", payload, 2, 1234, 1_700_000_000_123))
    assert _payload(frame) == (b'{"type":"tick","token":"BTC-USD","partition":2,"offset":1234,'
                               b'"ts":1700000000123,"data":' + payload + b"}")
    assert json.loads(_payload(frame))["data"] == {"b": 1, "a": [1.5, "é"]}


def test_tick_frame_base64_for_non_json():
    """Binary or non-JSON payloads travel base64-encoded and decode to the same bytes."""
    for payload in (b"\x00\xff\x10", b"NaN", b"plain text", b""):
        doc = json.loads(_payload(tick_frame(Record("T", payload))))
        assert base64.b64decode(doc["data_b64"]) == payload
        assert "data" not in doc


def test_snapshot_frames_carry_position_and_resync_mark():
    """Snapshots carry their record's position; a resync says so, a plain snapshot does not."""
    rec = Record("ETH-USD", b'{"px":2}', 1, 77, 1_700_000_000_999)
    plain = json.loads(_payload(snapshot_frame(rec)))
    assert plain == {"type": "snapshot", "token": "ETH-USD", "partition": 1, "offset": 77,
                     "ts": 1_700_000_000_999, "data": {"px": 2}}
    assert json.loads(_payload(snapshot_frame(rec, resync=True)))["resync"] is True


def test_ws_frame_lengths():
    """Frames use the 7-bit, 16-bit and 64-bit length forms at the RFC 6455 boundaries."""
    assert ws_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert ws_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    big = ws_frame(b"x" * 70000)
    assert big[1] == 127 and struct.unpack("!Q", big[2:10])[0] == 70000


def test_ack_and_close_frames():
    """Acks are JSON text frames; close frames carry the code first."""
    assert json.loads(_payload(ack_frame("subscribed", ("A",), 1))) == {
        "type": "subscribed", "tokens": ["A"], "id": 1}
    frame = close_frame(4008, "slow")
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 4008 and frame[4:] == b"slow"
