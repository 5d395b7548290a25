"""The Python client's pure core (clients/python/shardcast_client): no sockets, exact values."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shardcast_client.codes import Policy, close_policy, handshake_policy
from shardcast_client.config import ClientConfig
from shardcast_client.core import (
    AuthFailedEvent,
    Backoff,
    DuplicateEvent,
    ErrorEvent,
    GapEvent,
    Positions,
    StateEvent,
    Stats,
    UnsubscribedEvent,
    Update,
    UpdateBuffer,
    UrlRing,
)
from shardcast_client.frames import Ack, Authenticated, Data, Error, Invalid, chunks, parse_frame
from shardcast_client.session import AUTH_HOOK, AUTH_STATIC, Dial, Session

URLS = ["ws://a/ws", "ws://b/ws", "ws://c/ws"]
WALL = 1_000.0


def _u(token="T", offset=1, partition=0, kind="tick", data=None) -> Update:
    return Update(token, kind, data, partition, offset, 0, 0)


def _tick(token="T", offset=1, partition=0, data=1, kind="tick", resync=False) -> str:
    doc = {"type": kind, "token": token, "partition": partition, "offset": offset, "ts": 5}
    if resync:
        doc["resync"] = True
    return json.dumps(doc)[:-1] + ',"data":' + json.dumps(data) + "}"


def _session(tokens=("T",), auth="none", rand=0.5, **cfg) -> Session:
    return Session(URLS, ClientConfig(**cfg), auth=auth, tokens=tokens, rand=lambda: rand,
                   wall=lambda: WALL)


def _names(s: Session) -> list[str]:
    return [n for n, _ in s.take_events()]


def _open(s: Session, now: float = 0.0, token: str | None = None) -> list[dict]:
    """Open a connection to the current dial's URL; the requests it sends, parsed."""
    return [json.loads(t) for t in s.opened(s.next_dial().url, "shardcast.v1", token, now)]


def _ack_all(s: Session, reqs: list[dict], now: float = 0.0) -> None:
    for r in reqs:
        s.received(json.dumps({"type": "subscribed", "tokens": r["tokens"], "id": r["id"]}), now)


# -- positions --------------------------------------------------------------------------------------


def test_positions_drop_at_or_behind_and_accept_ahead_or_another_partition():
    """Same partition: at or behind the held offset is a duplicate; ahead, or another partition, is news."""
    p = Positions()
    assert [p.accept(_u(offset=o)) for o in (5, 5, 4, 6)] == [True, False, False, True]
    assert p.accept(_u(offset=1, partition=1)) is True  # re-partitioned topic: starts afresh
    assert p.accept(_u(offset=1, partition=1, kind="resync")) is False
    assert p.accept(_u(offset=2, partition=1, kind="resync")) is True
    assert (p.duplicates, p.last("T").offset, p.last("T").kind) == (3, 2, "resync")
    p.forget(["T"])
    assert p.last("T") is None and p.accept(_u(offset=0)) is True


# -- close codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "policy"), [
    (1001, Policy.RECONNECT_NOW), (1012, Policy.RECONNECT_NOW),
    (4008, Policy.BACKOFF), (4029, Policy.BACKOFF), (1006, Policy.BACKOFF), (4001, Policy.BACKOFF),
    (1011, Policy.BACKOFF), (1000, Policy.BACKOFF), (4999, Policy.BACKOFF),
    (4010, Policy.RESUBSCRIBE_GAP), (4011, Policy.REFRESH_TOKEN),
    (4003, Policy.STOP_AUTH), (4012, Policy.STOP_AUTH),
    (1002, Policy.STOP_PROTOCOL), (1003, Policy.STOP_PROTOCOL), (1007, Policy.STOP_PROTOCOL),
    (1009, Policy.STOP_PROTOCOL),
])
def test_close_policy_table(code, policy):
    """Each close code maps to the contract's policy; unknown codes back off."""
    assert close_policy(code) is policy


def test_handshake_policy():
    """A refused upgrade stops only on 401 (a token in the URL refused); 503, 429, no answer back off."""
    assert [handshake_policy(s) for s in (401, 503, 429, 403, None)] == [
        Policy.STOP_AUTH, Policy.BACKOFF, Policy.BACKOFF, Policy.BACKOFF, Policy.BACKOFF]


# -- backoff and URLs ------------------------------------------------------------------------------


def test_backoff_is_full_jitter_below_a_doubling_capped_bound():
    """delay = rand * min(max, initial * 2**attempt); reset starts again from initial."""
    top = Backoff(0.25, 10.0, rand=lambda: 1.0)
    assert [top.next_delay_s() for _ in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    half = Backoff(0.25, 10.0, rand=lambda: 0.5)
    assert [half.next_delay_s() for _ in range(3)] == [0.125, 0.25, 0.5]
    half.reset()
    assert (half.attempt, half.next_delay_s()) == (0, 0.125)
    many = Backoff(0.25, 10.0, rand=lambda: 1.0)
    for _ in range(1000):  # the attempt counter is capped: no overflow after days of retrying
        many.next_delay_s()
    assert (many.attempt, many.next_delay_s()) == (32, 10.0)


def test_url_ring_picks_the_first_at_random_then_rotates():
    """The first URL comes from rand (clipped into range), duplicates collapse, each advance moves on."""
    assert UrlRing(URLS, rand=lambda: 0.0).current == "ws://a/ws"
    assert UrlRing(URLS, rand=lambda: 0.7).current == "ws://c/ws"
    assert UrlRing(URLS, rand=lambda: 1.0).current == "ws://c/ws"
    ring = UrlRing([*URLS, "ws://a/ws"], rand=lambda: 0.4)
    assert [ring.current, ring.advance(), ring.advance(), ring.advance()] == [
        "ws://b/ws", "ws://c/ws", "ws://a/ws", "ws://b/ws"]
    assert UrlRing(["ws://one/ws"], rand=lambda: 0.9).advance() == "ws://one/ws"
    with pytest.raises(ValueError):
        UrlRing([])


# -- update buffer -----------------------------------------------------------------------------------


def test_update_buffer_is_fifo_until_full_then_conflates_per_token():
    """Below the bound every update comes out in order; at the bound only each token's newest stays."""
    stats = Stats()
    buf = UpdateBuffer(4, stats)
    for u in (_u("A", 1), _u("B", 1), _u("A", 2), _u("A", 3)):
        buf.push(u)
    buf.push(_u("B", 2))  # over the bound: A1, B1, A2 collapse away (A3, then B2 arrived)
    assert [(u.token, u.offset) for u in _drain(buf)] == [("A", 3), ("B", 2)]
    assert (stats.conflated, stats.dropped) == (3, 0)


def test_update_buffer_drops_oldest_only_when_more_tokens_than_room():
    """With more distinct tokens waiting than the bound, the oldest goes (counted dropped)."""
    stats = Stats()
    buf = UpdateBuffer(2, stats)
    for u in (_u("A"), _u("B"), _u("C")):
        buf.push(u)
    assert [u.token for u in _drain(buf)] == ["B", "C"]
    assert (stats.conflated, stats.dropped, len(buf)) == (0, 1, 0)


def _drain(buf: UpdateBuffer) -> list[Update]:
    out = []
    while (u := buf.pop()) is not None:
        out.append(u)
    return out


# -- frames --------------------------------------------------------------------------------------------


def test_parse_data_frames():
    """Ticks and snapshots carry their position; resync is its own kind; data_b64 becomes bytes."""
    assert parse_frame(_tick("BTC-USD", 7, 2, {"px": 1.5})) == Data("tick", "BTC-USD", 2, 7, 5, {"px": 1.5})
    assert parse_frame(_tick(kind="snapshot")).kind == "snapshot"
    assert parse_frame(_tick(kind="snapshot", resync=True)).kind == "resync"
    b64 = '{"type":"tick","token":"T","partition":0,"offset":1,"ts":5,"data_b64":"AAEC"}'
    assert parse_frame(b64).data == b"\x00\x01\x02"


@pytest.mark.parametrize(("text", "reason"), [
    ("not json", "not JSON"),
    ("[1]", "not an object"),
    ("[" * 100_000, "not JSON"),
    ('{"type":"tick","token":"bad token","partition":0,"offset":1,"ts":1,"data":1}', "invalid token"),
    ('{"type":"tick","token":"T","partition":true,"offset":1,"ts":1,"data":1}', "bad partition"),
    ('{"type":"tick","token":"T","partition":0,"offset":-1,"ts":1,"data":1}', "bad offset"),
    ('{"type":"tick","token":"T","partition":0,"offset":1.5,"ts":1,"data":1}', "bad offset"),
    ('{"type":"tick","token":"T","partition":0,"offset":' + "9" * 30 + ',"ts":1,"data":1}', "bad offset"),
    ('{"type":"tick","token":"T","partition":0,"offset":1,"ts":1}', "without data"),
    ('{"type":"tick","token":"T","partition":0,"offset":1,"ts":1,"data_b64":"!!"}', "bad data_b64"),
    ('{"type":"subscribed","tokens":"T"}', "without a valid token list"),
    ('{"type":"authenticated","expires":"soon"}', "without expires"),
    ('{"type":"error","code":' + json.dumps("x" * 65) + "}", "without a code"),
    ('{"type":"surprise"}', "unknown type"),
])
def test_parse_rejects_hostile_frames_without_raising(text, reason):
    """Malformed, ill-typed, out-of-range or absurdly nested frames become Invalid, never an exception."""
    frame = parse_frame(text)
    assert isinstance(frame, Invalid) and reason in frame.reason


def test_parse_bounds_size_and_binary():
    """A frame over the bound or a binary frame is dropped before any parsing."""
    assert parse_frame("{}" + " " * 100, max_chars=50) == Invalid("frame too large")
    assert parse_frame(b'{"type":"pong"}') == Invalid("binary frame")


def test_parse_replies():
    """Acks, grant notices, errors and authenticated parse with their ids; foreign ids are ignored."""
    assert parse_frame('{"type":"subscribed","tokens":["A","B"],"id":3}') == Ack("subscribed", ("A", "B"), 3)
    assert parse_frame('{"type":"unsubscribed","tokens":["A"],"reason":"grant"}') == Ack(
        "unsubscribed", ("A",), None, "grant")
    assert parse_frame('{"type":"pong","id":"x"}') == Ack("pong", (), None)
    assert parse_frame('{"type":"authenticated","expires":1700000000,"id":1}') == Authenticated(1.7e9, 1)
    long = "m" * 300
    err = parse_frame('{"type":"error","code":"forbidden","message":"' + long + '","tokens":["X"],"id":2}')
    assert err == Error("forbidden", long[:256], ("X",), 2)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_raises_on_any_text(text):
    """Fuzz: any text gives a frame or an Invalid, never an exception."""
    parse_frame(text)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids,
                                                                                max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["tick", "snapshot", "subscribed", "unsubscribed", "error", "authenticated", "pong"]),
       st.dictionaries(st.sampled_from(["token", "partition", "offset", "ts", "data", "data_b64", "tokens",
                                        "code", "message", "expires", "id", "reason", "resync"]), _json))
def test_parse_never_raises_on_frames_of_known_types_with_any_fields(kind, fields):
    """Fuzz: known frame types with fields of any JSON type give a typed frame or an Invalid."""
    frame = parse_frame(json.dumps({"type": kind, **fields}))
    assert isinstance(frame, Data | Ack | Authenticated | Error | Invalid)


def test_chunks_of_at_most_100():
    """Subscriptions go out in requests the shard accepts."""
    assert [len(c) for c in chunks([str(i) for i in range(250)])] == [100, 100, 50]


# -- session: connecting and subscribing -------------------------------------------------------------------


def test_resubscribes_in_chunks_and_is_connected_once_all_are_answered():
    """Without a token the desired set goes out in chunks of 100; `connected` after the last reply."""
    s = _session(tokens=[f"T{i}" for i in range(250)], rand=0.0)
    assert s.next_dial() == Dial("ws://a/ws", 0.0, 0)
    reqs = _open(s)
    assert [(r["op"], len(r["tokens"]), r["id"]) for r in reqs] == [
        ("subscribe", 100, 1), ("subscribe", 100, 2), ("subscribe", 50, 3)]
    _ack_all(s, reqs[:2])
    assert "state" not in _names(s)
    _ack_all(s, reqs[2:])
    assert s.take_events() == [("state", StateEvent("connected", "ws://a/ws", 0, subprotocol="shardcast.v1"))]


def test_token_goes_first_and_subscribes_wait_for_authenticated():
    """With a token: the auth request alone, then the resubscribe once `authenticated` comes."""
    s = _session(auth=AUTH_STATIC)
    assert _open(s, token="jwt") == [{"op": "auth", "token": "jwt", "id": 1}]
    assert s.subscribe(["U"]) == []  # not open yet: kept in the desired set
    acts = s.received('{"type":"authenticated","expires":1600,"id":1}', 0.0)
    assert [json.loads(t) for t in acts.sends] == [{"op": "subscribe", "tokens": ["T", "U"], "id": 2}]
    assert s.conn.refresh_at is None  # a static token is never refreshed


@pytest.mark.parametrize(("expires", "refresh_at"), [(1600, 570.0), (1004, 2.0)])
def test_refresh_is_due_before_exp_or_at_half_life(expires, refresh_at):
    """With a hook, refresh refresh_before_s (30 s) before exp, or at half-life for a short token."""
    s = _session(auth=AUTH_HOOK, ping_interval_s=1000)
    _open(s, token="jwt")
    s.received(json.dumps({"type": "authenticated", "expires": expires, "id": 1}), 0.0)
    assert s.conn.refresh_at == refresh_at
    assert s.deadline(0.0) == refresh_at
    assert s.tick(refresh_at - 0.001).refresh is False
    assert s.tick(refresh_at).refresh is True
    assert s.tick(refresh_at + 1).refresh is False  # asked once
    assert [json.loads(t)["op"] for t in s.refreshed("jwt2")] == ["auth"]
    s.take_events()
    assert s.refreshed(None) == []
    assert s.take_events() == [("error", ErrorEvent("token_hook", "get_token gave no token for the refresh"))]


def test_subscribe_on_a_live_connection_asks_only_for_what_it_lacks():
    """A live subscribe sends the tokens not subscribed there yet, also ones refused earlier."""
    s = _session(tokens=["A", "B"])
    _open(s)
    s.received('{"type":"subscribed","tokens":["A"],"id":1}', 0.0)  # as if B had been refused
    assert [json.loads(t)["tokens"] for t in s.subscribe(["A", "B", "C"])] == [["B", "C"]]
    assert s.subscribe(["A"]) == []
    assert list(s.desired) == ["A", "B", "C"]


def test_invalid_tokens_from_the_app_are_refused_at_once():
    """A token the shard would refuse is the app's bug: ValueError, nothing changes."""
    s = _session()
    with pytest.raises(ValueError):
        s.subscribe(["ok", "not ok"])
    assert list(s.desired) == ["T"]


# -- session: updates --------------------------------------------------------------------------------------


def test_updates_surface_once_and_duplicates_are_counted():
    """A tick becomes an update event (received_at from the wall clock); a repeat becomes `duplicate`."""
    s = _session()
    _ack_all(s, _open(s))
    s.take_events()
    s.received(_tick("T", 3, 1, {"px": 1}), 0.0)
    s.received(_tick("T", 3, 1, {"px": 1}, kind="snapshot"), 0.0)
    s.received(_tick("OTHER", 1), 0.0)  # not subscribed: ignored
    s.received(_tick("T", 4, 1, 2, kind="snapshot", resync=True), 0.0)
    assert s.take_events() == [
        ("update", Update("T", "tick", {"px": 1}, 1, 3, 5, 1_000_000)),
        ("duplicate", DuplicateEvent("T", 1, 3)),
        ("update", Update("T", "resync", 2, 1, 4, 5, 1_000_000)),
    ]
    st_ = s.stats
    assert (st_.updates, st_.duplicates, st_.resyncs) == (2, 1, 1)


def test_invalid_frames_are_counted_and_reported():
    """A hostile frame is dropped, counted and reported as an `error` event; the connection goes on."""
    s = _session()
    _open(s)
    s.take_events()
    acts = s.received("[" * 10_000, 0.0)
    assert (acts.sends, acts.close, s.stats.invalid_frames) == ([], None, 1)
    assert s.take_events() == [("error", ErrorEvent("invalid_frame", "not JSON"))]


def test_unsubscribe_forgets_and_sends():
    """Unsubscribing leaves the desired set, forgets the position and tells the shard."""
    s = _session()
    _ack_all(s, _open(s))
    s.received(_tick("T", 3), 0.0)
    assert [json.loads(t) for t in s.unsubscribe(["T"])] == [{"op": "unsubscribe", "tokens": ["T"], "id": 2}]
    assert (list(s.desired), s.positions.last("T")) == ([], None)


def test_narrowed_grant_unsubscribes_and_forgets():
    """`unsubscribed` with reason grant is announced and those tokens leave the desired set."""
    s = _session(tokens=["A", "B"])
    _ack_all(s, _open(s))
    s.take_events()
    s.received('{"type":"unsubscribed","tokens":["B"],"reason":"grant"}', 0.0)
    assert s.take_events() == [("unsubscribed", UnsubscribedEvent(("B",), "grant"))]
    assert list(s.desired) == ["A"]


def test_forbidden_tokens_leave_and_the_allowed_rest_is_asked_again():
    """`forbidden` subscribed nothing: the denied tokens are dropped, the others requested again."""
    s = _session(tokens=["A", "X", "B"])
    _open(s)
    acts = s.received('{"type":"error","code":"forbidden","message":"no","tokens":["X"],"id":1}', 0.0)
    assert [json.loads(t) for t in acts.sends] == [{"op": "subscribe", "tokens": ["A", "B"], "id": 2}]
    assert s.take_events() == [("error", ErrorEvent("forbidden", "no", ("X",)))]
    s.received('{"type":"subscribed","tokens":["A","B"],"id":2}', 0.0)
    assert [n for n, _ in s.take_events()] == ["state"]  # connected once the retry is answered
    assert list(s.desired) == ["A", "B"]


def test_rate_limited_request_without_id_is_the_oldest_and_is_retried():
    """The shard's rate_limited error has no id: it answers the oldest request, which is resent later."""
    s = _session(tokens=[f"T{i}" for i in range(150)], retry_s=1.0)
    reqs = _open(s)
    s.received('{"type":"error","code":"rate_limited","message":"slow down"}', 0.0)
    s.received(json.dumps({"type": "subscribed", "tokens": reqs[1]["tokens"], "id": 2}), 0.0)
    assert (s.take_events(), s.deadline(0.0)) == ([], 1.0)
    assert s.tick(0.9).sends == []
    assert [json.loads(t)["id"] for t in s.tick(1.0).sends] == [1]
    s.received(json.dumps({"type": "subscribed", "tokens": reqs[0]["tokens"], "id": 1}), 1.0)
    assert [e.state for n, e in s.take_events() if n == "state"] == ["connected"]


# -- session: keepalive -----------------------------------------------------------------------------------


def test_ping_after_silence_then_close_without_pong():
    """Nothing received for ping_interval_s: ping; still nothing for pong_timeout_s: close 4000."""
    s = _session(ping_interval_s=15, pong_timeout_s=10)
    _ack_all(s, _open(s))
    assert (s.deadline(0.0), s.tick(14.9).sends) == (15.0, [])
    assert [json.loads(t) for t in s.tick(15.0).sends] == [{"op": "ping", "id": 2}]
    assert s.deadline(15.0) == 10.0
    acts = s.tick(25.0)
    assert acts.close == (4000, "nothing received for 10 s after a ping")
    s.take_events()
    s.closed(4000, "", 25.0, by_peer=False)
    assert [n for n, _ in s.take_events()] == ["state"]  # reconnecting, no error: it was our own close


def test_any_frame_answers_a_ping():
    """A tick after the ping is proof of life: no close."""
    s = _session()
    _ack_all(s, _open(s))
    s.tick(15.0)
    s.received(_tick("T", 1), 16.0)
    assert s.tick(26.0).close is None


# -- session: closes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1001, 1012])
def test_going_away_or_drained_goes_to_another_url_at_once_then_backs_off(code):
    """1001/1012: the next URL with no delay; should that attempt fail, the next one backs off."""
    s = _session(rand=0.0)
    _ack_all(s, _open(s))
    s.take_events()
    s.closed(code, "bye", 1.0)
    assert s.next_dial() == Dial("ws://b/ws", 0.0, 1)
    assert s.take_events() == [("state", StateEvent("reconnecting", "ws://b/ws", 1, 0, code, "bye"))]
    s.connect_failed(503, "HTTP 503")
    assert s.next_dial() == Dial("ws://c/ws", 0.0, 2)  # rand 0.0: the delay is drawn, and is 0 here


def test_abnormal_close_backs_off_with_jitter_to_the_next_url():
    """1006: the next URL after rand * min(max, initial * 2**attempt); stats count the reconnect."""
    s = _session(rand=0.5)  # first URL: int(0.5 * 3) = b
    _open(s)
    s.take_events()
    s.closed(1006, "lost", 1.0)
    assert s.next_dial() == Dial("ws://c/ws", 0.125, 1)
    assert s.take_events() == [("state", StateEvent("reconnecting", "ws://c/ws", 1, 125, 1006, "lost"))]
    s.closed(1006, "lost", 2.0)
    assert (s.next_dial(), s.stats.reconnects) == (Dial("ws://a/ws", 0.25, 2), 2)


def test_stable_or_subscribed_connection_resets_the_backoff():
    """A connection that got its subscriptions (or lived stable_after_s) starts the backoff afresh."""
    s = _session()
    s.backoff.attempt = 5
    _ack_all(s, _open(s))
    assert s.backoff.attempt == 0
    empty = _session(tokens=())
    empty.backoff.attempt = 5
    _open(empty, now=0.0)
    assert empty.backoff.attempt == 5  # nothing subscribed: only time resets it
    empty.closed(1006, "", 5.0)
    assert empty.next_dial().delay_s == 0.125  # reset, then attempt 0: 0.5 * 0.25


def test_data_lost_emits_gap_for_the_connections_tokens_then_backs_off():
    """4010: a `gap` event listing the tokens subscribed on that connection, then backoff."""
    s = _session(tokens=["A", "B", "C"])
    _open(s)
    s.received('{"type":"subscribed","tokens":["A","B","C"],"id":1}', 0.0)
    s.unsubscribe(["C"])
    s.take_events()
    s.closed(4010, "data lost", 1.0)
    assert s.take_events()[0] == ("gap", GapEvent(("A", "B"), 4010))
    assert (s.stats.gaps, s.next_dial().delay_s) == (1, 0.125)


def test_expired_token_with_a_hook_reconnects_at_once_to_the_same_url():
    """4011 with get_token: the same URL, no delay (the hook is asked before the dial)."""
    s = _session(auth=AUTH_HOOK, rand=0.0)
    _open(s, token="jwt")
    s.closed(4011, "token expired", 1.0)
    assert s.next_dial() == Dial("ws://a/ws", 0.0, 1)


def test_expired_static_token_stops_with_auth_failed():
    """4011 with only a static token: nothing can renew it, so the client stops and says why."""
    s = _session(auth=AUTH_STATIC)
    _open(s, token="jwt")
    s.take_events()
    s.closed(4011, "token expired", 1.0)
    assert s.take_events() == [("auth_failed", AuthFailedEvent(4011, "token expired")),
                               ("state", StateEvent("closed", None, 0, 0, 4011, "token expired"))]
    assert (s.next_dial(), s.stopped.auth) == (None, True)


@pytest.mark.parametrize("code", [4003, 4012])
def test_refused_token_stops_for_good(code):
    """4003/4012: auth_failed, then closed; never another dial."""
    s = _session(auth=AUTH_HOOK)
    _open(s, token="jwt")
    s.take_events()
    s.closed(code, "invalid token", 1.0)
    assert [n for n, _ in s.take_events()] == ["auth_failed", "state"]
    assert s.next_dial() is None


def test_protocol_error_stops_and_reports():
    """1002/1003/1007/1009 from the shard: this client sent something wrong; stop and report it."""
    s = _session()
    _open(s)
    s.take_events()
    s.closed(1009, "frame over 16384 bytes", 1.0)
    assert s.take_events() == [("error", ErrorEvent(1009, "frame over 16384 bytes")),
                               ("state", StateEvent("closed", None, 0, 0, 1009, "frame over 16384 bytes"))]
    assert (s.next_dial(), s.stopped.auth) == (None, False)


def test_server_protocol_fault_closed_by_this_side_backs_off():
    """A close this side started (the server sent a frame too big for us) says nothing of the shard's
    wishes: back off and report it, never stop."""
    s = _session()
    _open(s)
    s.take_events()
    s.closed(1009, "over size limit", 1.0, by_peer=False)
    names = [n for n, _ in s.take_events()]
    assert (names, s.next_dial().delay_s) == (["error", "state"], 0.125)


def test_refused_upgrades():
    """HTTP 401 stops (auth_failed 401); 503 backs off to the next URL."""
    s = _session(rand=0.0)
    s.connect_failed(503, "HTTP 503")
    assert s.next_dial() == Dial("ws://b/ws", 0.0, 1)
    s.connect_failed(401, "HTTP 401")
    assert s.take_events()[-2:] == [("auth_failed", AuthFailedEvent(401, "HTTP 401")),
                                    ("state", StateEvent("closed", None, 1, 0, 401, "HTTP 401"))]


def test_token_hook_giving_nothing_stops_and_raising_backs_off():
    """get_token returning nothing stops (4011 after an expiry, else 4003); raising is retried."""
    s = _session(auth=AUTH_HOOK, rand=0.0)
    s.token_failed("get_token raised OSError: down")
    assert s.next_dial() == Dial("ws://b/ws", 0.0, 1)
    s.last_code = 4011
    s.token_missing()
    assert ("auth_failed", AuthFailedEvent(4011, "get_token gave no token")) in s.take_events()
    assert s.next_dial() is None


def test_close_by_the_app_stops_everything():
    """close(): a `closed` state, no further dial; the connection's close is then only bookkeeping."""
    s = _session()
    _open(s)
    s.take_events()
    s.close()
    s.closed(1000, "", 1.0)
    assert s.take_events() == [("state", StateEvent("closed", None, 0, 0, 1000, "closed by the client"))]
    assert (s.next_dial(), s.stopped.by_user) == (None, True)


def test_config_rejects_nonsense():
    """Negative, infinite or zero-where-it-matters settings fail at construction."""
    for bad in ({"backoff_initial_s": -1}, {"ping_interval_s": 0}, {"max_pending": 0},
                {"backoff_max_s": float("inf")}, {"backoff_initial_s": 5, "backoff_max_s": 1}):
        with pytest.raises(ValueError):
            ClientConfig(**bad)
