"""Client protocol: parse requests and encode frames. Pure functions, no I/O.

Requests (JSON text frames), each with an optional ``id`` echoed in the reply:
``{"op":"subscribe","tokens":[...]}``, ``{"op":"unsubscribe","tokens":[...]}``,
``{"op":"ping"}``, ``{"op":"auth","token":...}``. Replies: ``subscribed`` /
``unsubscribed`` / ``pong`` acks, ``tick`` and ``snapshot`` frames (each with
its Kafka position), and ``error`` frames with a stable code from
`shard.codes`. The versioned spec (subprotocol `SUBPROTOCOL`) is
docs/protocol.md, machine-readable in docs/asyncapi.yaml.

Tick frames are encoded once per record and the same bytes are written to
every subscriber: `tick_frame` returns a complete WebSocket frame.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass

from common.records import TOKEN_RE, Record
from shard.codes import ErrorCode

SUBPROTOCOL = "shardcast.v1"  # Sec-WebSocket-Protocol of this protocol version (docs/protocol.md)
MAX_ID_CHARS = 64
MAX_DEPTH = 8  # requests nest 2 deep; deeper JSON is refused before parsing (no RecursionError)
MAX_AUTH_TOKEN_CHARS = 8192
# Strings (skipped; an unterminated one runs to the end, so the scan stays linear) and brackets.
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
OP_TEXT = 0x1
OP_CLOSE = 0x8


@dataclass(frozen=True, slots=True)
class Subscribe:
    tokens: tuple[str, ...]
    req_id: int | str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    tokens: tuple[str, ...]
    req_id: int | str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    req_id: int | str | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    """A connection token: authenticates the connection, or refreshes its grant and expiry."""

    token: str
    req_id: int | str | None = None


@dataclass(frozen=True, slots=True)
class ProtocolError:
    code: ErrorCode
    message: str
    req_id: int | str | None = None


Request = Subscribe | Unsubscribe | Ping | Auth


def parse_request(text: str, max_tokens: int) -> Request | ProtocolError:
    """Turn one inbound text frame into a request, or the error to send back.

    Never raises: a client's frame must not be able to hurt the shard.
    """
    if _too_deep(text):
        return ProtocolError(ErrorCode.INVALID_JSON, f"JSON nested deeper than {MAX_DEPTH}")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: belt and braces, _too_deep stops it
        return ProtocolError(ErrorCode.INVALID_JSON, "frame is not valid JSON")
    if not isinstance(msg, dict):
        return ProtocolError(ErrorCode.NOT_AN_OBJECT, "request must be a JSON object")
    req_id = msg.get("id")
    if req_id is not None and not _valid_id(req_id):
        return ProtocolError(ErrorCode.BAD_REQUEST, "id must be an integer or a short string")
    op = msg.get("op")
    if op == "ping":
        return Ping(req_id)
    if op == "auth":
        token = msg.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_AUTH_TOKEN_CHARS:
            return ProtocolError(ErrorCode.BAD_REQUEST, "token must be a non-empty string", req_id)
        return Auth(token, req_id)
    if op not in ("subscribe", "unsubscribe"):
        if not isinstance(op, str):
            return ProtocolError(ErrorCode.BAD_REQUEST, "op must be a string", req_id)
        return ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:32]!r}", req_id)
    tokens = _parse_tokens(msg.get("tokens"), max_tokens, req_id)
    if isinstance(tokens, ProtocolError):
        return tokens
    return Subscribe(tokens, req_id) if op == "subscribe" else Unsubscribe(tokens, req_id)


def _too_deep(text: str) -> bool:
    """Whether `text` nests brackets deeper than MAX_DEPTH (outside strings).

    Counting brackets first keeps the common case at C speed; only a frame
    with many brackets gets the string-aware scan.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for m in _NESTING.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False


def _valid_id(req_id: object) -> bool:
    if isinstance(req_id, bool):
        return False
    if isinstance(req_id, int):
        return abs(req_id) < 2**53
    return isinstance(req_id, str) and len(req_id) <= MAX_ID_CHARS


def _parse_tokens(
    raw: object, max_tokens: int, req_id: int | str | None
) -> tuple[str, ...] | ProtocolError:
    if not isinstance(raw, list) or not raw:
        return ProtocolError(ErrorCode.BAD_REQUEST, "tokens must be a non-empty list", req_id)
    if len(raw) > max_tokens:
        return ProtocolError(
            ErrorCode.TOO_MANY_TOKENS, f"at most {max_tokens} tokens per request", req_id
        )
    for t in raw:
        if not isinstance(t, str):
            return ProtocolError(ErrorCode.BAD_REQUEST, "tokens must be strings", req_id)
        if not TOKEN_RE.fullmatch(t):
            return ProtocolError(
                ErrorCode.INVALID_TOKEN,
                f"invalid token {t[:64]!r}: 1-64 of A-Z a-z 0-9 . _ : / -",
                req_id,
            )
    return tuple(dict.fromkeys(raw))


def negotiate_subprotocol(header: str | None) -> tuple[bool, str | None]:
    """(accept the upgrade?, the subprotocol to echo) for a ``Sec-WebSocket-Protocol`` value.

    The header is a comma-separated list (repeated header lines arrive joined
    with commas); each element is compared whole, never as a substring (the
    stock gevent-websocket hook would take ``shardcast.v10`` for ours). No
    list, or an empty one: accepted without a subprotocol, as plain tools
    connect. A list without `SUBPROTOCOL`: refused, so a client built for
    another version learns it from the HTTP status instead of talking past
    the shard (a browser would fail such a connection anyway, unechoed).
    """
    offered = [p.strip(" \t") for p in (header or "").split(",")]
    offered = [p for p in offered if p]
    if not offered:
        return True, None
    if SUBPROTOCOL in offered:
        return True, SUBPROTOCOL
    return False, None


def _reply(doc: dict[str, object], req_id: int | str | None) -> bytes:
    if req_id is not None:
        doc["id"] = req_id
    return ws_frame(json.dumps(doc, separators=(",", ":")).encode())


def ack_frame(kind: str, tokens: tuple[str, ...] | None = None, req_id=None) -> bytes:
    """A complete frame acknowledging a request (``subscribed``/``unsubscribed``/``pong``)."""
    doc: dict[str, object] = {"type": kind}
    if tokens is not None:
        doc["tokens"] = list(tokens)
    return _reply(doc, req_id)


def error_frame(err: ProtocolError) -> bytes:
    """A complete error frame; the connection stays open."""
    return _reply({"type": "error", "code": str(err.code), "message": err.message}, err.req_id)


def data_frame(kind: bytes, rec: Record, resync: bool = False) -> bytes:
    """Build the one WebSocket frame every subscriber of `rec.token` gets for this value.

    `kind` is ``tick`` (a live update) or ``snapshot`` (the last known value,
    sent on subscribe; ``"resync":true`` when it replaces values the client
    missed). Every data frame carries its record's position (Kafka
    ``partition`` and ``offset``: per token, offsets only grow, so a client can
    drop a duplicate or spot a gap) and ``ts``, the producer's timestamp in ms,
    so a client can tell how old a price is. A payload that is JSON is embedded
    verbatim as ``data`` (its bytes unchanged, and last, so the frame is a plain
    concatenation); anything else is carried base64-encoded as ``data_b64``.
    """
    head = b'{"type":"%s","token":%s,"partition":%d,"offset":%d,"ts":%d%s' % (
        kind, json.dumps(rec.token).encode(), rec.partition, rec.offset, rec.produce_ts_ms,
        b',"resync":true' if resync else b"")
    payload = rec.payload
    if _is_json(payload):
        body = head + b',"data":' + payload + b"}"
    else:
        body = head + b',"data_b64":"' + base64.b64encode(payload) + b'"}'
    return ws_frame(body)


def tick_frame(rec: Record) -> bytes:
    return data_frame(b"tick", rec)


def snapshot_frame(rec: Record, resync: bool = False) -> bytes:
    return data_frame(b"snapshot", rec, resync)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _is_json(payload: bytes) -> bool:
    """Strict UTF-8 (no BOM, no encoded surrogates) holding one valid JSON value.

    Only such a payload may be embedded verbatim: a text frame must be valid
    UTF-8 JSON for every client. `json.loads(bytes)` alone would take UTF-16
    and UTF-32 too, and a BOM, and Python's decoder is what rejects CESU-8's
    encoded surrogates; anything else travels as base64.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if text.startswith("\ufeff"):
        return False
    try:
        json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


def ws_frame(data: bytes, opcode: int = OP_TEXT) -> bytes:
    """An unmasked, unfragmented server→client WebSocket frame."""
    n = len(data)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + data


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame carrying `code` and a short UTF-8 reason."""
    return ws_frame(struct.pack("!H", code) + reason.encode()[:120], OP_CLOSE)
