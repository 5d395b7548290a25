"""Sec-WebSocket-Protocol negotiation (shard.protocol.negotiate_subprotocol): pure, no network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard.protocol import SUBPROTOCOL, negotiate_subprotocol


@pytest.mark.parametrize("header", [None, "", " ", ",", " , ,\t"])
def test_no_list_is_accepted_without_a_subprotocol(header):
    """No header, or a list with no element, is accepted and nothing is echoed (plain tools)."""
    assert negotiate_subprotocol(header) == (True, None)


@pytest.mark.parametrize("header", [
    "shardcast.v1",
    " shardcast.v1 ",
    "chat, shardcast.v1",
    "shardcast.v2,shardcast.v1",
    "shardcast.v1,\tchat",
    "chat,shardcast.v1,shardcast.v1",
])
def test_a_list_with_ours_is_accepted_and_ours_echoed(header):
    """Wherever shardcast.v1 stands in the list, and however spaced, it is chosen."""
    assert negotiate_subprotocol(header) == (True, SUBPROTOCOL)


@pytest.mark.parametrize("header", [
    "chat",
    "shardcast.v2",
    "shardcast.v10",  # gevent-websocket's substring test would take these three
    "xshardcast.v1",
    "shardcast.v1.1",
    "Shardcast.V1",  # compared case-sensitively, as browsers compare the echo
    "shardcast.v1;q=1",
    "shardcast v1",
])
def test_a_list_without_ours_is_refused(header):
    """A list of other names, or of ours as part of a longer element, is refused."""
    assert negotiate_subprotocol(header) == (False, None)


@given(st.text(max_size=200))
def test_any_header_gives_one_of_the_three_answers(header):
    """Never raises; accepts with ours exactly when an element is ours, refuses only non-empty lists."""
    ok, chosen = negotiate_subprotocol(header)
    elements = [e.strip(" \t") for e in header.split(",") if e.strip(" \t")]
    assert (ok, chosen) == ((True, SUBPROTOCOL) if SUBPROTOCOL in elements
                            else (not elements, None))
