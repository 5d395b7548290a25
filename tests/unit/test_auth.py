"""Client-token verification, grants, upgrade token and Origin policy (pure, no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shard.auth import (
    AuthError,
    Grant,
    bearer_token,
    hs256_verifier,
    jwks_verifier,
    origin_allowed,
    parse_grant,
    pem_verifier,
)
from shard.config import parse_args as shard_args
from shard.token import issue
from shard.token import main as token_main

SECRET = b"s" * 32


def _pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _hs256_signed_with(secret: bytes, claims: dict) -> str:
    """An HS256 JWT built by hand (PyJWT refuses a PEM as HMAC key: the attack we test for)."""
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    return (signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()


def test_grant_matches_exact_names_and_prefixes():
    """Exact entries match only themselves; `X*` matches every token starting with X."""
    g = parse_grant(["ETH-USD", "BTC-*"], 10.0)
    assert g.allows("ETH-USD") and g.allows("BTC-USD") and g.allows("BTC-")
    assert not g.allows("ETH-EUR") and not g.allows("BTC") and not g.allows("XBTC-USD")
    assert g.forbidden(["BTC-EUR", "SOL-USD", "ETH-USD", "ETH"]) == ("SOL-USD", "ETH")
    assert g.expires_at == 10.0


def test_star_alone_grants_everything():
    """`*` alone is every token (and makes other entries irrelevant)."""
    g = parse_grant(["ETH-USD", "*"], 0)
    assert g == Grant(frozenset(), ("",), 0) and g.allows("ANY.THING")


@pytest.mark.parametrize("claim", [None, "BTC-*", [], [1], ["has space"], ["BTC-**"], ["*BTC"],
                                   ["x" * 65], ["a"] * 1001])
def test_malformed_grant_refuses_the_token(claim):
    """A missing, empty, non-list or malformed `tokens` claim refuses the whole token."""
    with pytest.raises(AuthError):
        parse_grant(claim, 0)


def test_hs256_token_verifies_into_its_grant():
    """A token signed with the shared secret yields its grant and expiry."""
    token = issue(SECRET, ["BTC-*"], 60)
    g = hs256_verifier(SECRET).verify(token, time.time())
    assert g.prefixes == ("BTC-",) and g.expires_at > time.time()


def test_expired_token_is_refused_as_expired():
    """An expired token raises AuthError with `expired` set (4011, not 4003)."""
    token = issue(SECRET, ["*"], 60, now=time.time() - 120)
    with pytest.raises(AuthError) as exc:
        hs256_verifier(SECRET).verify(token)
    assert exc.value.expired


@pytest.mark.parametrize("claims", [
    {"tokens": ["*"]},  # no exp: would never expire
    {"exp": 9999999999},  # no grant
    {"tokens": ["*"], "exp": "soon"},
])
def test_tokens_without_exp_or_grant_are_refused(claims):
    """`exp` and `tokens` are required and typed."""
    with pytest.raises(AuthError) as exc:
        hs256_verifier(SECRET).verify(jwt.encode(claims, SECRET, "HS256"))
    assert not exc.value.expired


def test_wrong_secret_audience_and_issuer_are_refused():
    """Signature, aud and iss are checked when configured; an unconfigured aud is not required."""
    v = hs256_verifier(SECRET, audience="shardcast", issuer="ops")
    assert v.verify(issue(SECRET, ["*"], 60, audience="shardcast", issuer="ops")).allows("A")
    for token in (issue(b"t" * 32, ["*"], 60, audience="shardcast", issuer="ops"),
                  issue(SECRET, ["*"], 60, audience="other", issuer="ops"),
                  issue(SECRET, ["*"], 60, audience="shardcast", issuer="mallory"),
                  issue(SECRET, ["*"], 60, issuer="ops"),
                  "", "x" * 9000, "a.b.c"):
        with pytest.raises(AuthError):
            v.verify(token)
    assert hs256_verifier(SECRET).verify(issue(SECRET, ["*"], 60, audience="any")).allows("A")


def test_alg_none_and_hmac_with_the_public_key_are_refused():
    """The algorithm comes from the key, never from the token: no `none`, no HS256 with a PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    v = pem_verifier(_pem(key))
    unsigned = jwt.encode({"tokens": ["*"], "exp": time.time() + 60}, None, algorithm="none")
    forged = _hs256_signed_with(_pem(key), {"tokens": ["*"], "exp": int(time.time()) + 60})
    for token in (unsigned, forged):
        with pytest.raises(AuthError):
            v.verify(token)
    assert v.verify(issue(key, ["A"], 60, "RS256")).allows("A")


def test_short_hs256_secret_and_unusable_keys_are_refused_at_start():
    """A secret under 32 bytes, an unsupported curve or a JWKS without signing keys fail at start-up."""
    with pytest.raises(ValueError):
        hs256_verifier(b"short")
    with pytest.raises(ValueError):
        pem_verifier(_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(ValueError):
        jwks_verifier(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(ValueError):
        jwks_verifier("[]")


def test_jwks_picks_the_key_by_kid():
    """With several JWKS keys, the token's kid chooses; an unknown kid is refused."""
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)
    doc = {"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k1.public_key())), "kid": "a"},
                    {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k2.public_key())), "kid": "b"}]}
    v = jwks_verifier(json.dumps(doc))
    assert v.verify(issue(k1, ["X"], 60, "ES256", kid="a")).allows("X")
    assert v.verify(issue(k2, ["Y"], 60, "RS256", kid="b")).allows("Y")
    for token in (issue(k1, ["X"], 60, "ES256", kid="b"), issue(k1, ["X"], 60, "ES256", kid="c"),
                  issue(k1, ["X"], 60, "ES256")):
        with pytest.raises(AuthError):
            v.verify(token)


def test_bearer_token_from_header_or_query():
    """The Authorization header wins over ?token=; anything else means no token."""
    assert bearer_token("Bearer abc", "token=xyz") == "abc"
    assert bearer_token("bearer  abc ", None) == "abc"
    assert bearer_token(None, "a=1&token=xyz") == "xyz"
    assert bearer_token("Basic dXNlcg==", "x=1") is None
    assert bearer_token(None, "&".join(f"k{i}=v" for i in range(50)) + "&token=x") is None


@pytest.mark.parametrize(("origin", "host", "allowed", "ok"), [
    (None, "h:1", (), True),  # not a browser
    ("http://h:1", "h:1", (), True),
    ("https://H:1/", "h:1", (), True),
    ("http://evil.example", "h:1", (), False),
    ("null", "h:1", (), False),
    ("http://h:1", None, (), False),
    ("https://app.example", "h:1", ("https://app.example",), True),
    ("http://h:1", "h:1", ("https://app.example",), False),
    ("http://evil.example", "h:1", ("*",), True),
])
def test_origin_policy(origin, host, allowed, ok):
    """Same host by default, exact list when configured, `*` for any, no Origin always allowed."""
    assert origin_allowed(origin, host, allowed) is ok


def test_token_cli_signs_a_token_the_shard_accepts(monkeypatch, capsys, tmp_path):
    """`python -m shard.token` signs with the env secret or a secret file, never a flag value."""
    monkeypatch.setenv("SHARDCAST_JWT_SECRET", SECRET.decode())
    assert token_main(["--tokens", "BTC-*,ETH-USD", "--ttl-s", "60", "--aud", "a"]) == 0
    g = hs256_verifier(SECRET, audience="a").verify(capsys.readouterr().out.strip())
    assert g.allows("BTC-USD") and g.allows("ETH-USD") and not g.allows("ETH-EUR")
    monkeypatch.delenv("SHARDCAST_JWT_SECRET")
    (tmp_path / "s").write_text("f" * 40 + "\n")
    token_main(["--tokens", "*", "--secret-file", str(tmp_path / "s")])
    assert hs256_verifier(b"f" * 40).verify(capsys.readouterr().out.strip()).allows("Z")
    with pytest.raises(SystemExit):
        token_main(["--tokens", "*"])  # no secret anywhere
    with pytest.raises(SystemExit):
        token_main(["--tokens", "bad token", "--secret-file", str(tmp_path / "s")])


def test_shard_takes_the_secret_only_from_env_or_file(monkeypatch):
    """`--jwt-secret VALUE` is refused; --auth jwt needs exactly one key; the config never shows it."""
    monkeypatch.delenv("SHARDCAST_JWT_SECRET", raising=False)
    with pytest.raises(SystemExit):
        shard_args(["--auth", "jwt", "--jwt-secret", SECRET.decode()])
    with pytest.raises(SystemExit):
        shard_args(["--auth", "jwt"])
    monkeypatch.setenv("SHARDCAST_JWT_SECRET", SECRET.decode())
    cfg = shard_args(["--auth", "jwt", "--allowed-origins", "https://A.example/, *"])
    assert cfg.verifier is not None and SECRET.decode() not in repr(cfg)
    assert cfg.allowed_origins == ("https://a.example", "*")
    with pytest.raises(SystemExit):
        shard_args(["--auth", "jwt", "--jwt-jwks-file", "/nonexistent"])  # two keys
    assert shard_args([]).verifier is None  # --auth off by default
