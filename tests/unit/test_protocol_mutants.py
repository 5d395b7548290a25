"""Exact results of the client protocol at its edges: every error a client can get (code, message
and echoed id), the bounds on ids, tokens and nesting, and the bytes of each frame form."""

from __future__ import annotations

import json
import struct

import pytest

from common.records import Record
from shard.codes import ErrorCode
from shard.protocol import (
    MAX_AUTH_TOKEN_CHARS,
    MAX_DEPTH,
    MAX_ID_CHARS,
    OP_CLOSE,
    Auth,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    ack_frame,
    close_frame,
    error_frame,
    negotiate_subprotocol,
    parse_request,
    tick_frame,
    ws_frame,
)

BAD = ErrorCode.BAD_REQUEST
TOKEN_RULE = ": 1-64 of A-Z a-z 0-9 . _ : / -"
LONG_BAD_TOKEN = "!" * 70


def _req(**doc) -> str:
    return json.dumps(doc)


@pytest.mark.parametrize(("text", "expected"), [
    ("{", ProtocolError(ErrorCode.INVALID_JSON, "frame is not valid JSON")),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
     ProtocolError(ErrorCode.INVALID_JSON, f"JSON nested deeper than {MAX_DEPTH}")),
    ("[1]", ProtocolError(ErrorCode.NOT_AN_OBJECT, "request must be a JSON object")),
    ('{"op":"ping","id":1.5}', ProtocolError(BAD, "id must be an integer or a short string")),
    ('{"op":7,"id":3}', ProtocolError(BAD, "op must be a string", 3)),
    (_req(op="z" * 40, id="q"), ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {'z' * 32!r}", "q")),
    ('{"op":"auth","id":4}', ProtocolError(BAD, "token must be a non-empty string", 4)),
    ('{"op":"auth","token":"","id":4}', ProtocolError(BAD, "token must be a non-empty string", 4)),
    ('{"op":"auth","token":5,"id":4}', ProtocolError(BAD, "token must be a non-empty string", 4)),
    (_req(op="auth", token="t" * (MAX_AUTH_TOKEN_CHARS + 1), id=4),
     ProtocolError(BAD, "token must be a non-empty string", 4)),
    ('{"op":"subscribe","id":5}', ProtocolError(BAD, "tokens must be a non-empty list", 5)),
    ('{"op":"unsubscribe","tokens":["A","B","C"],"id":5}',
     ProtocolError(ErrorCode.TOO_MANY_TOKENS, "at most 2 tokens per request", 5)),
    ('{"op":"subscribe","tokens":["A",1],"id":5}', ProtocolError(BAD, "tokens must be strings", 5)),
    (_req(op="subscribe", tokens=[LONG_BAD_TOKEN], id=5),
     ProtocolError(ErrorCode.INVALID_TOKEN, f"invalid token {LONG_BAD_TOKEN[:64]!r}{TOKEN_RULE}", 5)),
])
def test_each_error_has_its_exact_code_message_and_id(text, expected):
    """Every refusal is one exact ProtocolError: the stable code, the documented message, the echoed id."""
    assert parse_request(text, 2) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (_req(op="auth", token="t" * MAX_AUTH_TOKEN_CHARS, id=4), Auth("t" * MAX_AUTH_TOKEN_CHARS, 4)),
    ('{"op":"auth","token":"x"}', Auth("x", None)),
    ('{"op":"unsubscribe","tokens":["A","B"],"id":"u"}', Unsubscribe(("A", "B"), "u")),
    ('{"op":"subscribe","tokens":["A","B"],"id":-3}', Subscribe(("A", "B"), -3)),
    (_req(op="ping", id=2**53 - 1), Ping(2**53 - 1)),
    (_req(op="ping", id=-(2**53 - 1)), Ping(-(2**53 - 1))),
    ('{"op":"ping","id":1000}', Ping(1000)),
    (_req(op="ping", id="i" * MAX_ID_CHARS), Ping("i" * MAX_ID_CHARS)),
    ('{"op":"ping","id":""}', Ping("")),
])
def test_requests_at_the_bounds_are_accepted_exactly(text, expected):
    """The longest auth token, max_tokens tokens, ids just inside 2**53 and MAX_ID_CHARS are accepted."""
    assert parse_request(text, 2) == expected


@pytest.mark.parametrize("req_id", [2**53, -(2**53), 2**54, "i" * (MAX_ID_CHARS + 1), False, [1]])
def test_ids_beyond_the_bounds_are_refused(req_id):
    """An id of 2**53 or more in size, longer than MAX_ID_CHARS, a bool or a list is a bad request."""
    text = json.dumps({"op": "ping", "id": req_id})
    assert parse_request(text, 2) == ProtocolError(BAD, "id must be an integer or a short string")


def _nested(depth: int, opener: str) -> str:
    """Valid JSON `depth` deep: [[1]] or {"k":{"k":1}}."""
    if opener == "[":
        return "[" * depth + "1" + "]" * depth
    return '{"k":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("opener", ["[", "{"])
def test_valid_json_one_level_too_deep_is_refused_and_the_bound_itself_is_not(opener):
    """Well-formed JSON nested MAX_DEPTH+1 deep is invalid_json; MAX_DEPTH deep reaches the op check."""
    deep = f'{{"op":"ping","x":{_nested(MAX_DEPTH, opener)}}}'  # the object itself is one level
    too_deep = ProtocolError(ErrorCode.INVALID_JSON, f"JSON nested deeper than {MAX_DEPTH}")
    assert parse_request(deep, 2) == too_deep
    ok = f'{{"op":"ping","x":{_nested(MAX_DEPTH - 1, opener)},"y":[],"z":{{}}}}'
    assert ok.count("[") + ok.count("{") > MAX_DEPTH  # long enough for the string-aware scan
    assert parse_request(ok, 2) == Ping(None)


def test_each_closing_bracket_lowers_the_depth_by_one():
    """After [[[]] the depth is back to 2, not 1 or 0: seven more levels then make nine, too deep."""
    text = '{"op":"ping","x":[[[]],' + _nested(7, "[") + "]}"
    assert parse_request(text, 2) == ProtocolError(
        ErrorCode.INVALID_JSON, f"JSON nested deeper than {MAX_DEPTH}")


def test_closing_brackets_lower_the_depth_and_strings_do_not_count():
    """Many shallow siblings never add up to depth; brackets and quotes inside strings are text."""
    siblings = '{"op":"ping","x":[' + ",".join(["[[1]]"] * 20) + "]}"
    assert parse_request(siblings, 2) == Ping(None)
    quoted = '{"op":"ping","x":["a\\"[[[[[[[[[[", "]]]]"],"y":[[[[[[1]]]]]]}'
    assert parse_request(quoted, 2) == Ping(None)


def test_reply_frames_are_compact_json_bytes():
    """Acks and errors are compact JSON (no spaces), type first, id last when given."""
    assert ack_frame("pong") == ws_frame(b'{"type":"pong"}')
    assert ack_frame("subscribed", ("A", "B"), 7) == ws_frame(
        b'{"type":"subscribed","tokens":["A","B"],"id":7}')
    err = ProtocolError(ErrorCode.UNKNOWN_OP, "unknown op 'x'", "r1")
    assert error_frame(err) == ws_frame(
        b'{"type":"error","code":"unknown_op","message":"unknown op \'x\'","id":"r1"}')


@pytest.mark.parametrize(("n", "header"), [
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e" + struct.pack("!H", 126)),
    (65535, b"\x82\x7e" + struct.pack("!H", 65535)),
    (65536, b"\x82\x7f" + struct.pack("!Q", 65536)),
])
def test_ws_frame_headers_at_each_length_boundary_for_any_opcode(n, header):
    """FIN plus the opcode, then the 7-, 16- or 64-bit length: exact bytes at 125/126/65535/65536."""
    frame = ws_frame(b"b" * n, 0x2)
    assert frame[: len(header)] == header and len(frame) == len(header) + n


def test_close_frames_carry_the_code_and_at_most_120_bytes_of_reason():
    """A close frame is 0x88, the code in network order, then the reason cut to 120 bytes."""
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(4008, "r" * 200) == b"\x88\x7a" + struct.pack("!H", 4008) + b"r" * 120
    assert ws_frame(b"", OP_CLOSE) == b"\x88\x00"


@pytest.mark.parametrize("payload", [b"\xef\xbb\xbf{}", "\ufeff1".encode(), b"Infinity", b"-Infinity"])
def test_a_bom_or_a_non_json_constant_travels_as_base64(payload):
    """A payload starting with a UTF-8 BOM, or Infinity, is not embedded verbatim."""
    doc = json.loads(tick_frame(Record("T", payload))[2:])
    assert "data" not in doc and "data_b64" in doc


@pytest.mark.parametrize(("header", "expected"), [
    (" shardcast.v1\t", (True, "shardcast.v1")),
    ("Xshardcast.v1X", (False, None)),
    ("\x0bshardcast.v1", (False, None)),
])
def test_subprotocol_elements_are_trimmed_of_spaces_and_tabs_only(header, expected):
    """Only SP and HTAB around an element are optional whitespace; any other character makes another name."""
    assert negotiate_subprotocol(header) == expected
