"""The WebSocket edge against a real shard: JWT grants, Origin policy, caps, hostile frames."""

from __future__ import annotations

import json
import secrets
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shard.codes import Close
from shard.token import issue
from tests.integration.helpers import WsClient, close_code, upgrade_status, wait_for, ws_client

pytestmark = pytest.mark.integration
SECRET = secrets.token_urlsafe(32)


def _jwt_shard(stack, *flags: str):
    """A shard with --auth jwt verifying HS256 tokens signed with SECRET (given through the env)."""
    stack.c.env["SHARDCAST_JWT_SECRET"] = SECRET
    return stack.shard("s1", "--auth", "jwt", *flags)


def _token(grant: list[str], ttl_s: float = 600, key: object = None, **kw) -> str:
    return issue(SECRET.encode() if key is None else key, grant, ttl_s, **kw)


def _stats(sp) -> dict:
    return sp.stats()


def test_token_at_upgrade_in_query_or_header_authenticates(stack):
    """A valid token in ?token= or in Authorization: Bearer lets the client subscribe at once."""
    sp = _jwt_shard(stack)
    by_query = WsClient(f"{sp.ws_url}?token={_token(['*'])}")
    assert by_query.subscribe("BTC-USD")["tokens"] == ["BTC-USD"]
    by_header = ws_client(sp.ws_url, header=[f"Authorization: Bearer {_token(['ETH-USD'])}"])
    assert by_header.subscribe("ETH-USD")["tokens"] == ["ETH-USD"]
    by_query.close()
    by_header.close()


def test_auth_message_authenticates_and_only_auth_or_ping_come_before(stack):
    """Before auth a subscribe gets `unauthenticated` and a ping its pong; an auth message then opens it."""
    sp = _jwt_shard(stack)
    client = WsClient(sp.ws_url)
    refused = client.request({"op": "subscribe", "tokens": ["BTC-USD"]})
    assert refused["type"] == "error" and refused["code"] == "unauthenticated"
    assert client.request({"op": "ping"})["type"] == "pong"
    reply = client.request({"op": "auth", "token": _token(["BTC-USD"], ttl_s=300)})
    assert reply["type"] == "authenticated" and reply["expires"] > time.time()
    assert client.subscribe("BTC-USD")["tokens"] == ["BTC-USD"]
    client.close()


@pytest.mark.parametrize("kind", ["bad_signature", "expired", "wrong_audience", "garbage"])
def test_bad_token_at_upgrade_gets_401(stack, kind):
    """A forged, expired, wrong-audience or malformed token at the upgrade is refused with HTTP 401."""
    sp = _jwt_shard(stack, "--jwt-audience", "shardcast")
    token = {
        "bad_signature": issue(secrets.token_bytes(32), ["*"], 600, audience="shardcast"),
        "expired": _token(["*"], audience="shardcast", now=time.time() - 3600),
        "wrong_audience": _token(["*"], audience="someone-else"),
        "garbage": "not.a.jwt",
    }[kind]
    assert upgrade_status(f"{sp.ws_url}?token={token}") == 401
    assert upgrade_status(sp.ws_url, header=[f"Authorization: Bearer {token}"]) == 401
    assert _stats(sp)["auth_failures"] == 2


@pytest.mark.parametrize(("kind", "code"), [("bad_signature", Close.AUTH_FAILED),
                                            ("expired", Close.TOKEN_EXPIRED)])
def test_bad_token_in_auth_message_closes_with_named_code(stack, kind, code):
    """An auth message with a forged token closes with 4003, with an expired one with 4011."""
    sp = _jwt_shard(stack)
    token = (issue(secrets.token_bytes(32), ["*"], 600) if kind == "bad_signature"
             else _token(["*"], now=time.time() - 3600))
    client = WsClient(sp.ws_url)
    client.ws.send(json.dumps({"op": "auth", "token": token}))
    assert close_code(client) == code


def test_no_token_within_auth_timeout_closes_4012(stack):
    """A connection that sends no valid token within --auth-timeout-s is closed with 4012."""
    sp = _jwt_shard(stack, "--auth-timeout-s", "0.5")
    client = WsClient(sp.ws_url)
    assert close_code(client) == Close.AUTH_TIMEOUT


def test_subscribe_outside_grant_is_forbidden_and_changes_nothing(stack):
    """Exact and prefix grants allow their tokens; a request with any other is refused whole."""
    sp = _jwt_shard(stack)
    client = WsClient(f"{sp.ws_url}?token={_token(['BTC-*', 'ETH-USD'])}")
    err = client.request({"op": "subscribe", "tokens": ["BTC-USD", "SOL-USD", "ETH-EUR"]})
    assert err["type"] == "error" and err["code"] == "forbidden"
    assert err["tokens"] == ["SOL-USD", "ETH-EUR"] and "SOL-USD" in err["message"]
    assert _stats(sp)["tokens"] == 0  # BTC-USD, allowed, was not subscribed either
    assert client.subscribe("BTC-USD", "BTC-EUR", "ETH-USD")["tokens"] == ["BTC-USD", "BTC-EUR", "ETH-USD"]
    assert client.request({"op": "subscribe", "tokens": ["ETH-EUR"]})["code"] == "forbidden"
    assert _stats(sp)["tokens"] == 3
    client.close()


def test_token_expiry_closes_a_live_connection_with_4011(stack):
    """At its token's exp a live, subscribed connection is closed with 4011."""
    sp = _jwt_shard(stack)
    # 4-5 s left (exp is in whole seconds): the upgrade and the subscribe fit on a loaded machine.
    client = WsClient(f"{sp.ws_url}?token={_token(['*'], ttl_s=5)}")
    client.subscribe("BTC-USD")
    assert close_code(client) == Close.TOKEN_EXPIRED
    wait_for(lambda: _stats(sp)["tokens"] == 0, what="subscriptions dropped")


def test_refresh_before_expiry_keeps_the_connection_and_applies_the_new_grant(stack):
    """A fresh token sent before exp keeps the connection; subscriptions outside its grant are dropped."""
    sp = _jwt_shard(stack)
    first = _token(["*"], ttl_s=4)  # room for the subscribe and the refresh on a loaded machine
    first_exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    client = WsClient(f"{sp.ws_url}?token={first}")
    client.subscribe("BTC-USD", "ETH-USD")
    client.ws.send(json.dumps({"op": "auth", "token": _token(["BTC-*"], ttl_s=600), "id": 99}))
    notice = client.next_control()
    assert notice == {"type": "unsubscribed", "tokens": ["ETH-USD"], "reason": "grant"}
    assert client.next_control()["type"] == "authenticated"
    wait_for(lambda: time.time() > first_exp + 1, timeout_s=10, what="the first token's exp to pass")
    assert client.request({"op": "ping"})["type"] == "pong"  # still open
    assert _stats(sp)["tokens"] == 1
    client.close()


def test_origin_policy(stack):
    """An upgrade from a foreign Origin gets 403; the shard's own host and no Origin get 101."""
    sp = stack.shard("s1")
    assert upgrade_status(sp.ws_url, origin="http://evil.example") == 403
    assert upgrade_status(sp.ws_url, origin=f"http://127.0.0.1:{sp.ws_port}") == 101
    assert upgrade_status(sp.ws_url, suppress_origin=True) == 101
    listed = stack.shard("s2", "--allowed-origins", "https://app.example, https://b.example")
    assert upgrade_status(listed.ws_url, origin="https://app.example") == 101
    assert upgrade_status(listed.ws_url, origin=f"http://127.0.0.1:{listed.ws_port}") == 403


def test_per_ip_connection_cap(stack):
    """Upgrades beyond --max-connections-per-ip from one address get 429; a freed slot is reusable."""
    sp = stack.shard("s1", "--max-connections-per-ip", "3")
    clients = [WsClient(sp.ws_url) for _ in range(3)]
    assert upgrade_status(sp.ws_url) == 429
    clients.pop().close()
    wait_for(lambda: _stats(sp)["connections"] == 2, what="the closed connection to go")
    clients.append(WsClient(sp.ws_url))
    for c in clients:
        c.close()


def test_shard_token_cap(stack):
    """A subscribe that would take the shard past --max-shard-tokens gets `capacity`, nothing else."""
    sp = stack.shard("s1", "--max-shard-tokens", "3")
    a, b = WsClient(sp.ws_url), WsClient(sp.ws_url)
    a.subscribe("T1", "T2")
    err = b.request({"op": "subscribe", "tokens": ["T3", "T4"]})
    assert err["type"] == "error" and err["code"] == "capacity"
    assert _stats(sp)["tokens"] == 2
    b.subscribe("T1", "T3")  # a carried token costs nothing; one new one still fits
    assert _stats(sp)["tokens"] == 3
    a.close()
    b.close()


def test_rs256_with_a_pem_public_key(stack, tmp_path):
    """With --jwt-public-key-file, RS256 tokens of its private key pass and others get 401."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    sp = stack.shard("s1", "--auth", "jwt", "--jwt-public-key-file", str(pem))
    good = WsClient(f"{sp.ws_url}?token={issue(key, ['BTC-USD'], 600, 'RS256')}")
    assert good.subscribe("BTC-USD")["type"] == "subscribed"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert upgrade_status(f"{sp.ws_url}?token={issue(other, ['*'], 600, 'RS256')}") == 401
    assert upgrade_status(f"{sp.ws_url}?token={_token(['*'])}") == 401  # no HMAC with this key
    good.close()


def test_es256_with_a_jwks_file(stack, tmp_path):
    """With --jwt-jwks-file, an ES256 token whose kid names a key there passes; an unknown kid gets 401."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))
    sp = stack.shard("s1", "--auth", "jwt", "--jwt-jwks-file", str(tmp_path / "jwks.json"))
    good = WsClient(f"{sp.ws_url}?token={issue(key, ['ETH-*'], 600, 'ES256', kid='k1')}")
    assert good.subscribe("ETH-USD")["type"] == "subscribed"
    assert upgrade_status(f"{sp.ws_url}?token={issue(key, ['*'], 600, 'ES256', kid='k2')}") == 401
    good.close()


def test_hostile_frames_get_an_error_and_the_connection_lives(stack):
    """A 10 KB `[[[[…` frame or deeply nested object gets invalid_json, and the connection still works."""
    sp = stack.shard("s1")
    client = WsClient(sp.ws_url)
    nested_object = '{"op":"ping","x":' + '{"a":' * 2000 + "1" + "}" * 2001
    for text in ("[" * 10_000, "[" * 5000 + "]" * 5000, nested_object):
        err = client.send_raw(text)
        assert err["type"] == "error" and err["code"] == "invalid_json", err
    assert client.request({"op": "ping"})["type"] == "pong"
    assert "Traceback" not in sp.log.read_text()
    client.close()
