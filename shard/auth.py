"""Client authentication: verify a JWT connection token into a `Grant`. Pure, no I/O.

A token is signed by the operator (``python -m shard.token``) with an HS256
secret, or by an identity service with an RSA (RS256) or P-256 (ES256) key
whose public half the shard holds as PEM or in a JWKS document. Claims:

* ``tokens`` (required): what the client may subscribe to — exact token names,
  prefix patterns such as ``BTC-*``, or ``*`` alone for every token;
* ``exp`` (required): the connection is closed (4011) at this time unless the
  client sends a fresh token first — a token without it would live forever;
* ``aud`` / ``iss``: checked when the shard is configured with them.

The algorithm is fixed by the key kind (never taken from the token's header),
so a token cannot pick ``none`` or sign with a public key as an HMAC secret.
The callers read keys from files and environment variables and pass the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from common.records import TOKEN_RE

MAX_JWT_CHARS = 8192  # longer than any sane connection token; bounds the work per auth attempt
MAX_GRANT_ENTRIES = 1000  # patterns in one `tokens` claim
MIN_HS256_SECRET_BYTES = 16  # refused below: guessable offline from any one token
GOOD_HS256_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


class AuthError(Exception):
    """A token we refuse; `expired` tells an old token from a bad one (different close codes)."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token allows: exact tokens, prefixes (``""`` = all) and its expiry."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    expires_at: float  # Unix seconds (the token's exp)

    def allows(self, token: str) -> bool:
        return token in self.exact or any(token.startswith(p) for p in self.prefixes)

    def forbidden(self, tokens: Iterable[str]) -> tuple[str, ...]:
        """The tokens of `tokens` this grant does not cover, in order."""
        return tuple(t for t in tokens if not self.allows(t))


def parse_grant(claim: object, expires_at: float) -> Grant:
    """Turn a ``tokens`` claim into a Grant; AuthError when it is malformed.

    A malformed entry refuses the whole token rather than being skipped: a
    typo in an issuer's grant should show at once, not as missing ticks.
    """
    if not isinstance(claim, list) or not claim or len(claim) > MAX_GRANT_ENTRIES:
        raise AuthError(f"claim 'tokens' must be a list of 1-{MAX_GRANT_ENTRIES} patterns")
    exact: set[str] = set()
    prefixes: set[str] = set()
    for entry in claim:
        if not isinstance(entry, str):
            raise AuthError("claim 'tokens' must hold strings")
        if entry.endswith("*"):
            prefix = entry[:-1]
            if prefix and not TOKEN_RE.fullmatch(prefix):
                raise AuthError(f"bad pattern {entry[:70]!a} in claim 'tokens'")
            prefixes.add(prefix)
        elif TOKEN_RE.fullmatch(entry):
            exact.add(entry)
        else:
            raise AuthError(f"bad token {entry[:70]!a} in claim 'tokens'")
    if "" in prefixes:  # `*`: everything; no need to test other patterns
        return Grant(frozenset(), ("",), expires_at)
    return Grant(frozenset(exact), tuple(sorted(prefixes)), expires_at)


@dataclass(frozen=True)
class Verifier:
    """Checks signature, expiry, audience and issuer of connection tokens.

    `keys` maps a key id (``None`` for the only key) to (key, algorithm).
    """

    keys: dict[str | None, tuple[object, str]] = field(repr=False)  # may be a shared secret
    audience: str | None = None
    issuer: str | None = None

    def verify(self, token: str, now: float | None = None) -> Grant:
        """The grant of a valid token; AuthError (``expired`` set when that is why) otherwise."""
        if not isinstance(token, str) or not token or len(token) > MAX_JWT_CHARS:
            raise AuthError("token missing or too long")
        key, alg = self._key_for(token)
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", expired=True) from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}"[:120]) from None
        exp = claims["exp"]
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("claim 'exp' must be a number")
        if now is not None and exp <= now:
            raise AuthError("token expired", expired=True)
        return parse_grant(claims.get("tokens"), float(exp))

    def _key_for(self, token: str) -> tuple[object, str]:
        if None in self.keys and len(self.keys) == 1:
            return self.keys[None]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}"[:120]) from None
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        found = self.keys.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise AuthError("no key for the token's kid")
        return found


def hs256_verifier(secret: bytes, audience: str | None = None, issuer: str | None = None) -> Verifier:
    """A verifier for tokens signed with a shared secret (at least 16 bytes; 32 recommended)."""
    if len(secret) < MIN_HS256_SECRET_BYTES:
        raise ValueError(f"the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes")
    return Verifier({None: (secret, "HS256")}, audience, issuer)


def public_key_algorithm(key: object) -> str:
    """RS256 for an RSA key, ES256 for a P-256 key; ValueError for anything else."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("public key must be RSA (RS256) or EC P-256 (ES256)")


def pem_verifier(pem: bytes, audience: str | None = None, issuer: str | None = None) -> Verifier:
    """A verifier for tokens signed with the private half of one PEM public key."""
    key = load_pem_public_key(pem)
    return Verifier({None: (key, public_key_algorithm(key))}, audience, issuer)


def jwks_verifier(document: str, audience: str | None = None, issuer: str | None = None) -> Verifier:
    """A verifier for a JWKS document (RSA and P-256 signing keys, chosen by the token's kid)."""
    try:
        keys = json.loads(document)["keys"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a JWKS document: {exc}") from None
    found: dict[str | None, tuple[object, str]] = {}
    for raw in keys:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig" or raw.get("kty") == "oct":
            continue  # encryption keys and shared secrets have no place here
        key = jwt.PyJWK.from_dict(raw).key
        found[raw.get("kid")] = (key, public_key_algorithm(key))
    if not found:
        raise ValueError("the JWKS document has no RSA or EC P-256 signing key")
    return Verifier(found, audience, issuer)


def bearer_token(authorization: str | None, query_string: str | None) -> str | None:
    """The connection token of an upgrade: ``Authorization: Bearer`` first, else ``?token=``.

    Browsers cannot set headers on a WebSocket, hence the query parameter;
    the shard logs no request lines, so it does not end up in a log there.
    """
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if query_string:
        try:
            values = parse_qs(query_string, max_num_fields=20).get("token")
        except ValueError:  # more fields than any client of ours sends
            return None
        if values:
            return values[0]
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a WebSocket upgrade's Origin may connect (cross-site WebSocket hijacking).

    No Origin: not a browser, which is no ambient-credential risk. `allowed`
    holds exact origins (``*`` = any); empty means the page must come from the
    host the request was sent to (its Host header).
    """
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if allowed:
        return "*" in allowed or origin in allowed
    scheme, sep, netloc = origin.partition("://")
    return bool(sep and host) and scheme in ("http", "https") and netloc == host.strip().lower()
