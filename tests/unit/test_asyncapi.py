"""docs/asyncapi.yaml: valid AsyncAPI 3.0.0, in step with shard/codes.py, and true of the frames
shard/protocol.py builds (pure, no network)."""

from __future__ import annotations

import base64
import copy
import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from common.records import TOKEN_RE, Record
from shard.codes import Close, ErrorCode
from shard.protocol import (
    MAX_AUTH_TOKEN_CHARS,
    MAX_ID_CHARS,
    SUBPROTOCOL,
    Auth,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    ack_frame,
    error_frame,
    parse_request,
    snapshot_frame,
    tick_frame,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "asyncapi.yaml"
PROSE = ROOT / "docs" / "protocol.md"
# Installed by `make node-deps` from the pinned @asyncapi/specs (clients/js/package.json).
OFFICIAL = ROOT / "clients/js/node_modules/@asyncapi/specs/schemas/3.0.0.json"
DOC_URI = "urn:shardcast:asyncapi"
CLIENT_MESSAGES = {"subscribe", "unsubscribe", "ping", "auth"}
SERVER_MESSAGES = {"subscribed", "unsubscribed", "pong", "authenticated", "error", "tick", "snapshot"}
REQUEST_TYPES = {"subscribe": Subscribe, "unsubscribe": Unsubscribe, "ping": Ping, "auth": Auth}


def _no_network(uri: str):
    """Every $ref must resolve inside the documents given: never fetch one."""
    raise NoSuchResource(ref=uri)


@cache
def _doc() -> dict:
    return yaml.safe_load(DOC.read_text())


@cache
def _official_validator() -> Draft7Validator:
    if not OFFICIAL.exists():
        pytest.skip(f"{OFFICIAL} missing: run `make node-deps` (npm) first")
    schema = json.loads(OFFICIAL.read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    # The bundle holds every definition under its own $id; crawling registers them all.
    registry = Registry(retrieve=_no_network).with_resource(
        schema["$id"], DRAFT7.create_resource(schema)).crawl()
    return Draft7Validator(schema, registry=registry)


def _payload_validator(message: str) -> Draft7Validator:
    """A validator for one message's payload schema, its $refs resolved inside docs/asyncapi.yaml."""
    registry = Registry(retrieve=_no_network).with_resource(DOC_URI, DRAFT7.create_resource(_doc()))
    ref = f"{DOC_URI}#/components/messages/{message}/payload"
    return Draft7Validator({"$ref": ref}, registry=registry)


@cache
def _validators() -> dict[str, Draft7Validator]:
    return {name: _payload_validator(name) for name in _doc()["components"]["messages"]}


def matching(doc: object, names: set[str] = SERVER_MESSAGES) -> list[str]:
    """The messages among `names` whose payload schema `doc` satisfies."""
    return sorted(n for n in names if _validators()[n].is_valid(doc))


def _unframe(frame: bytes) -> dict:
    """The JSON document of a server frame built by shard.protocol.ws_frame."""
    n = frame[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return json.loads(frame[start:])


def _ref_target(ref: str) -> str:
    """The last path element of a local $ref (`#/channels/shard/messages/tick` → `tick`)."""
    assert ref.startswith("#/"), ref
    return ref.rsplit("/", 1)[1]


# -- the document itself -------------------------------------------------------------------------

def test_document_is_valid_against_the_official_asyncapi_3_0_0_schema():
    """docs/asyncapi.yaml passes the AsyncAPI 3.0.0 JSON Schema of the pinned @asyncapi/specs."""
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}"
              for e in _official_validator().iter_errors(_doc())]
    assert errors == []
    assert _doc()["asyncapi"] == "3.0.0"


@pytest.mark.parametrize(("path", "value"), [
    (("operations", "sendTick", "action"), "publish"),  # AsyncAPI 2's verb, gone in 3.0
    (("components", "messages", "tick", "payloadd"), {}),  # a typo deep in a $ref'd definition
    (("channels", "shard", "bindings", "ws", "method"), "PUT"),  # the ws binding's own schema
])
def test_official_schema_rejects_a_broken_document(path, value):
    """The validator really checks (refs resolved): one wrong field anywhere makes the document invalid."""
    broken = copy.deepcopy(_doc())
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert not _official_validator().is_valid(broken)


def test_error_codes_are_exactly_those_of_codes_py():
    """The ErrorCode enum (and its descriptions) lists every ErrorCode of shard/codes.py, and no other."""
    schema = _doc()["components"]["schemas"]["ErrorCode"]
    assert schema["enum"] == [c.value for c in ErrorCode]
    assert list(schema["x-enum-descriptions"]) == [c.value for c in ErrorCode]


def test_close_codes_are_exactly_those_of_codes_py():
    """x-close-codes lists every Close of shard/codes.py by code and name, and no other."""
    listed = _doc()["channels"]["shard"]["x-close-codes"]
    assert [(c["code"], c["name"]) for c in listed] == [(c.value, c.name) for c in Close]
    policies = {"none", "reconnect_now", "backoff", "resubscribe_gap", "refresh_token", "stop_auth",
                "stop_protocol"}
    assert {c["client"] for c in listed} <= policies


def test_prose_spec_names_every_code():
    """docs/protocol.md has a table row for every close code and every error code."""
    text = PROSE.read_text()
    for c in Close:
        assert re.search(rf"^\| {c.value} \| {c.name} \|", text, re.M), c
    for e in ErrorCode:
        assert re.search(rf"^\| `{e.value}` \|", text, re.M), e
    assert f"`{SUBPROTOCOL}`" in text


def test_subprotocol_and_limits_agree_with_the_code():
    """Subprotocol name, token pattern, id and auth-token bounds are the ones shard.protocol enforces."""
    doc = _doc()
    schemas = doc["components"]["schemas"]
    assert doc["info"]["x-subprotocol"] == SUBPROTOCOL
    assert schemas["Token"]["pattern"] == f"^{TOKEN_RE.pattern}$"
    number, text = schemas["RequestId"]["oneOf"]
    assert (number["minimum"], number["maximum"]) == (-(2**53 - 1), 2**53 - 1)
    assert text["maxLength"] == MAX_ID_CHARS
    assert schemas["AuthRequest"]["properties"]["token"]["maxLength"] == MAX_AUTH_TOKEN_CHARS
    assert doc["channels"]["shard"]["bindings"]["ws"]["query"]["properties"]["token"]["maxLength"] \
        == MAX_AUTH_TOKEN_CHARS


def test_operations_split_the_channel_messages_into_client_and_server_messages():
    """receive operations take exactly the client messages; send operations and replies carry exactly
    the server messages; together they are the channel's messages, each a component of its name."""
    doc = _doc()
    channel = doc["channels"]["shard"]["messages"]
    assert {k: _ref_target(v["$ref"]) for k, v in channel.items()} == {k: k for k in channel}
    received, sent = set(), set()
    for op in doc["operations"].values():
        assert op["channel"]["$ref"] == "#/channels/shard"
        names = {_ref_target(m["$ref"]) for m in op["messages"]}
        assert all(m["$ref"].startswith("#/channels/shard/messages/") for m in op["messages"])
        (received if op["action"] == "receive" else sent).update(names)
        if "reply" in op:
            sent.update(_ref_target(m["$ref"]) for m in op["reply"]["messages"])
    assert received == CLIENT_MESSAGES
    assert sent == SERVER_MESSAGES
    assert set(channel) == CLIENT_MESSAGES | SERVER_MESSAGES


def test_every_example_matches_its_own_message_only():
    """Each message's examples satisfy its payload schema and no other message's."""
    messages = _doc()["components"]["messages"]
    for name, message in messages.items():
        assert message["examples"], name
        for example in message["examples"]:
            assert matching(example["payload"], set(messages)) == [name], example


def test_client_examples_are_requests_the_shard_parses():
    """Every client message example parses with shard.protocol.parse_request into its request type."""
    messages = _doc()["components"]["messages"]
    for name in CLIENT_MESSAGES:
        for example in messages[name]["examples"]:
            req = parse_request(json.dumps(example["payload"]), 100)
            assert isinstance(req, REQUEST_TYPES[name]), (name, req)


# -- frames built by shard.protocol ---------------------------------------------------------------

REC = Record("BTC-USD", b'{"price":97012.5}', partition=2, offset=81723, produce_ts_ms=1764427200123)
BINARY = Record("RAW-1", b"\x00\x01\xff\xfe", partition=0, offset=17, produce_ts_ms=1764427200200)

BUILT = [
    ("tick", tick_frame(REC)),
    ("tick", tick_frame(BINARY)),  # data_b64
    ("tick", tick_frame(Record("E", b"", 0, 0, 0))),  # empty payload: data_b64 ""
    ("tick", tick_frame(Record("N", b"null", 1, 5, 9))),  # JSON null is data
    ("tick", tick_frame(Record("U", "\ufeff{}".encode(), 1, 6, 9))),  # BOM: data_b64
    ("snapshot", snapshot_frame(REC)),
    ("snapshot", snapshot_frame(REC, resync=True)),
    ("snapshot", snapshot_frame(BINARY, resync=True)),
    ("subscribed", ack_frame("subscribed", ("BTC-USD", "ETH-USD"), 1)),
    ("subscribed", ack_frame("subscribed", ("a.b:c/d_e-f",), None)),
    ("unsubscribed", ack_frame("unsubscribed", ("ETH-USD",), "req-2")),
    ("pong", ack_frame("pong", None, None)),
    ("pong", ack_frame("pong", None, -(2**53 - 1))),
    ("pong", ack_frame("pong", None, "x" * MAX_ID_CHARS)),
]
# `forbidden` is built by shard.wsconn with its `tokens` list: the integration test covers it.
BUILT += [("error", error_frame(ProtocolError(code, f"because {code}", req_id)))
          for code in ErrorCode if code is not ErrorCode.FORBIDDEN for req_id in (None, 7)]


@pytest.mark.parametrize(("kind", "frame"), BUILT, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BUILT)])
def test_frames_built_by_protocol_py_match_exactly_their_message(kind, frame):
    """Each frame shard.protocol builds satisfies exactly one server message schema: its own."""
    doc = _unframe(frame)
    assert matching(doc) == [kind], doc


def test_resync_and_data_b64_frames_carry_what_the_schema_describes():
    """A resync snapshot has resync true; a binary payload decodes back from data_b64."""
    resync = _unframe(snapshot_frame(BINARY, resync=True))
    assert resync["resync"] is True and "data" not in resync
    assert base64.b64decode(resync["data_b64"], validate=True) == BINARY.payload
    assert "resync" not in _unframe(snapshot_frame(REC))


TICK = {"type": "tick", "token": "BTC-USD", "partition": 2, "offset": 5, "ts": 1, "data": 1}


@pytest.mark.parametrize("bad", [
    {**TICK, "data_b64": "AA=="},  # both payload fields
    {k: v for k, v in TICK.items() if k != "data"},  # no payload
    {k: v for k, v in TICK.items() if k != "offset"},
    {**TICK, "offset": -1},
    {**TICK, "token": "has space"},
    {**TICK, "resync": True},  # only snapshots resync
    {**TICK, "type": "snapshot", "resync": False},
    {**{k: v for k, v in TICK.items() if k != "data"}, "data_b64": "not base64!"},
    {"type": "error", "code": "no_such_code", "message": "m"},
    {"type": "error", "code": "forbidden", "message": "m"},  # forbidden lists its tokens
    {"type": "subscribed", "tokens": []},
    {"type": "pong", "id": True},
    {"type": "pong", "id": "x" * (MAX_ID_CHARS + 1)},
    {"type": "authenticated", "expires": "soon"},
    {"type": "unsubscribed", "tokens": ["A"], "reason": "bored"},
    {"type": "kaboom"},
])
def test_malformed_frames_match_no_server_message(bad):
    """The schemas are not vacuous: frames the shard never sends match no server message."""
    assert matching(bad) == []
