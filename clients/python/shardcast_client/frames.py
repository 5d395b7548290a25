"""Server frames parsed as hostile input, and the client's requests. Pure functions, no I/O.

`parse_frame` turns one received message into a typed frame or an `Invalid`
saying why it was dropped. It never raises: a shard that is broken, or
something pretending to be one, must not be able to crash the client. Sizes
are bounded (the frame, strings, lists, numbers) before anything is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

TOKEN_RE = re.compile(r"[A-Za-z0-9._:/\-]{1,64}")
MAX_FRAME_CHARS = 1 << 20  # the adapters' max_size bounds the bytes; this bounds what parse sees
MAX_CODE_CHARS = 64
MAX_TEXT_CHARS = 256  # error messages and close reasons are kept this long at most
MAX_LIST_TOKENS = 100_000  # more than any shard's per-connection subscription limit
INT64 = 1 << 63
CHUNK_TOKENS = 100  # the shard's default --max-tokens-per-request


@dataclass(frozen=True, slots=True)
class Data:
    """A `tick`, or a `snapshot` (`resync` when it replaces missed ticks)."""

    kind: str  # "tick" | "snapshot" | "resync"
    token: str
    partition: int
    offset: int
    ts: int
    data: Any  # parsed JSON, or bytes for a `data_b64` payload


@dataclass(frozen=True, slots=True)
class Ack:
    """`subscribed` / `unsubscribed` (reason "grant" when a refreshed grant dropped them) / `pong`."""

    type: str
    tokens: tuple[str, ...] = ()
    req_id: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Authenticated:
    expires: float
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    tokens: tuple[str, ...] = ()
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A frame dropped by validation; `reason` is for counters and logs."""

    reason: str


Frame = Data | Ack | Authenticated | Error | Invalid


def valid_token(token: object) -> bool:
    return isinstance(token, str) and TOKEN_RE.fullmatch(token) is not None


def parse_frame(message: str | bytes, max_chars: int = MAX_FRAME_CHARS) -> Frame:
    """Parse one server message; never raises (the last-resort guard reports a bug as Invalid)."""
    try:
        return _parse(message, max_chars)
    except Exception as exc:  # a parser bug must not become a client crash
        return Invalid(f"parser error {type(exc).__name__}")


def _parse(message: str | bytes, max_chars: int) -> Frame:
    if not isinstance(message, str):
        return Invalid("binary frame")
    if len(message) > max_chars:
        return Invalid("frame too large")
    try:
        doc = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return Invalid("not JSON")
    if not isinstance(doc, dict):
        return Invalid("not an object")
    kind = doc.get("type")
    if kind in ("tick", "snapshot"):
        return _data(doc, kind)
    req_id = _req_id(doc.get("id"))
    if kind in ("subscribed", "unsubscribed"):
        tokens = _tokens(doc.get("tokens"))
        if tokens is None:
            return Invalid(f"{kind} without a valid token list")
        reason = doc.get("reason")
        return Ack(kind, tokens, req_id, _text(reason) if isinstance(reason, str) else None)
    if kind == "pong":
        return Ack("pong", (), req_id)
    if kind == "authenticated":
        expires = doc.get("expires")
        if not _is_number(expires):
            return Invalid("authenticated without expires")
        return Authenticated(float(expires), req_id)
    if kind == "error":
        code = doc.get("code")
        if not isinstance(code, str) or not code or len(code) > MAX_CODE_CHARS:
            return Invalid("error without a code")
        message_text = doc.get("message")
        tokens = _tokens(doc.get("tokens")) if "tokens" in doc else ()
        return Error(code, _text(message_text) if isinstance(message_text, str) else "", tokens or (),
                     req_id)
    return Invalid("unknown type")


def _data(doc: dict, kind: str) -> Frame:
    token = doc.get("token")
    if not valid_token(token):
        return Invalid("data frame with an invalid token")
    partition, offset, ts = doc.get("partition"), doc.get("offset"), doc.get("ts")
    if not (_is_int(partition) and 0 <= partition < 1 << 31):
        return Invalid("bad partition")
    if not (_is_int(offset) and 0 <= offset < INT64):
        return Invalid("bad offset")
    if not (_is_int(ts) and -INT64 <= ts < INT64):
        return Invalid("bad ts")
    if "data" in doc:
        data = doc["data"]
    elif isinstance(doc.get("data_b64"), str):
        try:
            data = base64.b64decode(doc["data_b64"], validate=True)
        except (binascii.Error, ValueError):
            return Invalid("bad data_b64")
    else:
        return Invalid("data frame without data")
    if kind == "snapshot" and doc.get("resync") is True:
        kind = "resync"
    return Data(kind, token, partition, offset, ts, data)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (_is_int(v) and abs(v) < INT64) or (isinstance(v, float) and v == v and abs(v) < 1e18)


def _req_id(v: object) -> int | None:
    """Only integer ids are ours (the client numbers its requests)."""
    return v if _is_int(v) and 0 < v < INT64 else None


def _tokens(v: object) -> tuple[str, ...] | None:
    if not isinstance(v, list) or len(v) > MAX_LIST_TOKENS or not all(valid_token(t) for t in v):
        return None
    return tuple(v)


def _text(s: str) -> str:
    return s[:MAX_TEXT_CHARS]


# -- requests ------------------------------------------------------------------


def _encode(doc: dict[str, object]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def auth_request(token: str, req_id: int) -> str:
    return _encode({"op": "auth", "token": token, "id": req_id})


def subscribe_request(tokens: tuple[str, ...], req_id: int) -> str:
    return _encode({"op": "subscribe", "tokens": list(tokens), "id": req_id})


def unsubscribe_request(tokens: tuple[str, ...], req_id: int) -> str:
    return _encode({"op": "unsubscribe", "tokens": list(tokens), "id": req_id})


def ping_request(req_id: int) -> str:
    return _encode({"op": "ping", "id": req_id})


def chunks(tokens: list[str] | tuple[str, ...], size: int = CHUNK_TOKENS) -> list[tuple[str, ...]]:
    """Split a token list into requests the shard accepts (at most `size` tokens each)."""
    return [tuple(tokens[i:i + size]) for i in range(0, len(tokens), size)]
