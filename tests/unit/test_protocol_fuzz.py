"""Fuzzing `parse_request`: whatever a client sends, it returns a request or a ProtocolError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shard.codes import ErrorCode
from shard.protocol import MAX_DEPTH, Auth, Ping, ProtocolError, Subscribe, Unsubscribe, parse_request

REQUEST_TYPES = (Subscribe, Unsubscribe, Ping, Auth, ProtocolError)
# No example database: nothing written into the work tree, every run draws afresh.
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "dance"]) | json_values,
        "tokens": st.lists(st.from_regex(r"[A-Za-z0-9._:/-]{1,64}", fullmatch=True) | json_values,
                           max_size=12) | json_values,
        "id": st.integers() | st.text(max_size=80) | json_values,
        "token": st.text(max_size=100) | json_values,
    },
)


def _parsed(text: str) -> object:
    result = parse_request(text, 10)
    assert isinstance(result, REQUEST_TYPES), result
    return result


@FUZZ
@given(st.text(max_size=2000))
def test_arbitrary_text_never_raises(text):
    """Any text frame yields a request or a ProtocolError, never an exception."""
    _parsed(text)


@FUZZ
@given(st.lists(st.sampled_from(list('[]{}",:\\ 1a')), max_size=3000).map("".join))
def test_bracket_soup_never_raises(text):
    """Frames made of brackets, quotes and escapes (deep, unbalanced, unterminated) never raise."""
    _parsed(text)


@FUZZ
@given(requests)
def test_request_shaped_objects_never_raise(doc):
    """Objects with op/tokens/id/token of any type and value parse to a request or an error."""
    result = _parsed(json.dumps(doc))
    if not isinstance(result, ProtocolError) and not isinstance(result, Ping):
        assert doc["op"] in ("subscribe", "unsubscribe", "auth")


@settings(database=None)
@given(st.integers(min_value=MAX_DEPTH + 1, max_value=20_000), st.sampled_from(["[", '{"a":']))
def test_nesting_beyond_the_bound_is_invalid_json(depth, opener):
    """JSON nested deeper than MAX_DEPTH is refused as invalid_json (the 10 KB `[[[[` frame)."""
    result = parse_request(opener * depth, 10)
    assert isinstance(result, ProtocolError) and result.code is ErrorCode.INVALID_JSON


def test_nesting_inside_strings_does_not_count():
    """Brackets inside string values are text, not nesting."""
    text = json.dumps({"op": "ping", "id": "[[[[[[[[[[[[{{{{{{{{{{"})
    assert parse_request(text, 10) == Ping("[[[[[[[[[[[[{{{{{{{{{{")
