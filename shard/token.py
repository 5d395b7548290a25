"""Issue a client connection token: `python -m shard.token --tokens 'BTC-*,ETH-USD' --ttl-s 3600`.

Signs with the HS256 secret the shards verify with (env SHARDCAST_JWT_SECRET or
--secret-file; never a flag value, which every local user could read with
`ps`), or with --private-key PEM (RSA: RS256, EC P-256: ES256) for shards
holding the public half. Prints the token on stdout. See shard.auth for the
claims.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shard.auth import MIN_HS256_SECRET_BYTES, AuthError, parse_grant, public_key_algorithm

MAX_TTL_S = 366 * 24 * 3600


def issue(key: object, tokens: list[str], ttl_s: float, algorithm: str = "HS256",
          audience: str | None = None, issuer: str | None = None, kid: str | None = None,
          now: float | None = None) -> str:
    """A signed connection token granting `tokens` for `ttl_s` seconds from `now`."""
    parse_grant(tokens, 0.0)  # refuse a grant the shards would refuse
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"tokens": tokens, "iat": issued, "exp": issued + int(ttl_s),
                                 "jti": uuid.uuid4().hex}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _signing_key(p: argparse.ArgumentParser, a: argparse.Namespace) -> tuple[object, str]:
    """(key, algorithm) from --private-key, else --secret-file, else $SHARDCAST_JWT_SECRET."""
    try:
        if a.private_key:
            key = load_pem_private_key(Path(a.private_key).read_bytes(), password=None)
            return key, public_key_algorithm(key.public_key())
        raw = (Path(a.secret_file).read_text().strip() if a.secret_file
               else os.environ.get("SHARDCAST_JWT_SECRET", ""))
    except (OSError, ValueError, TypeError) as exc:
        p.error(f"signing key: {exc}")
    if len(raw.encode()) < MIN_HS256_SECRET_BYTES:
        p.error(f"need an HS256 secret of >= {MIN_HS256_SECRET_BYTES} bytes in $SHARDCAST_JWT_SECRET "
                "or --secret-file, or --private-key")
    return raw.encode(), "HS256"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shard.token", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", required=True,
                   help="comma list of tokens and prefix patterns (BTC-*); * alone for all")
    p.add_argument("--ttl-s", type=float, default=3600.0, help="lifetime in seconds [3600]")
    p.add_argument("--aud", default=os.environ.get("SHARDCAST_JWT_AUDIENCE", ""),
                   help="aud claim [env SHARDCAST_JWT_AUDIENCE]")
    p.add_argument("--iss", default=os.environ.get("SHARDCAST_JWT_ISSUER", ""),
                   help="iss claim [env SHARDCAST_JWT_ISSUER]")
    p.add_argument("--secret-file", default=os.environ.get("SHARDCAST_JWT_SECRET_FILE", ""),
                   help="file holding the HS256 secret [env SHARDCAST_JWT_SECRET_FILE; "
                        "else env SHARDCAST_JWT_SECRET]")
    p.add_argument("--private-key", default="", help="PEM private key: sign RS256 / ES256 instead")
    p.add_argument("--kid", default="", help="key id header (for shards verifying with a JWKS)")
    a = p.parse_args(argv)
    if not 0 < a.ttl_s <= MAX_TTL_S:
        p.error(f"--ttl-s must be in (0, {MAX_TTL_S}]")
    key, alg = _signing_key(p, a)
    grant = [t.strip() for t in a.tokens.split(",") if t.strip()]
    try:
        token = issue(key, grant, a.ttl_s, alg, a.aud or None, a.iss or None, a.kid or None)
    except AuthError as exc:  # a grant the shards would refuse
        p.error(exc.reason)
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
