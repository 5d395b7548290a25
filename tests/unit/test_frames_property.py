"""Every data frame the shard builds is valid UTF-8 JSON that gives back the payload (property tests)."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from common.records import Record
from shard.protocol import snapshot_frame, tick_frame

# Payloads a hostile or careless producer sends: JSON in other encodings, with a BOM,
# CESU-8 surrogates, NaN, deep nesting, and plain garbage.
NASTY = [
    '{"px": 1}'.encode("utf-16"),
    '{"px": 1}'.encode("utf-32"),
    b"\xef\xbb\xbf" + b'{"px": 1}',
    b'{"s": "\xed\xa0\x80\xed\xb0\x80"}',  # a surrogate pair encoded CESU-8 style
    b'"\xed\xb2\x80"',
    b"NaN",
    b'{"a": Infinity}',
    b"[" * 20_000 + b"]" * 20_000,
    b"\x00",
    b"",
    b'{"ok": "\\ud800"}',  # a lone surrogate *escape* is ASCII: valid UTF-8 on the wire
]


def _body(frame: bytes) -> bytes:
    n = frame[1] & 0x7F
    return frame[2 + {126: 2, 127: 8}.get(n, 0):]


def _check(payload: bytes) -> None:
    for frame in (tick_frame(Record("T-1", payload, 1, 2, 3)),
                  snapshot_frame(Record("T-1", payload, 1, 2, 3), resync=True)):
        text = _body(frame).decode("utf-8")  # strict: raises on anything a browser would refuse
        doc = json.loads(text)
        if "data" in doc:
            assert json.loads(payload.decode("utf-8")) == doc["data"]
            assert text.endswith(payload.decode("utf-8") + "}")  # embedded byte for byte
        else:
            assert base64.b64decode(doc["data_b64"]) == payload


def test_known_hostile_payloads_never_make_an_invalid_frame():
    """UTF-16/32 JSON, BOM, CESU-8 surrogates, NaN and deep nesting travel as base64, never raw."""
    for payload in NASTY:
        _check(payload)
    assert "data_b64" in json.loads(_body(tick_frame(Record("T", NASTY[0]))))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_make_valid_utf8_json_frames(payload):
    """Whatever bytes a Kafka record holds, its frame is valid UTF-8 JSON that gives them back."""
    _check(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_values, st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]), st.booleans())
def test_json_payloads_in_any_encoding_make_valid_frames(value, encoding, ascii_only):
    """JSON documents, however encoded, are embedded only when strict UTF-8, else base64."""
    _check(json.dumps(value, ensure_ascii=ascii_only).encode(encoding))
