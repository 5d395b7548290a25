"""Watch live updates through the Python client: `python -m devstack.watch [--url ws://…/ws] TOKEN …`.

One JSON line per update on stdout (token, kind, partition, offset, ts, data);
connection changes, gaps and errors on stderr. The client reconnects across
every --url, resubscribes and drops duplicates. A JWT comes from --token,
SHARDCAST_TOKEN, or a ``?token=`` in a URL (taken out of the URL and sent in
the first message instead, as the client always does).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shardcast_client import AuthFailedError, Client, ClientStoppedError, Update

DEFAULT_URL = "ws://127.0.0.1:8780/ws"  # make run's front door


def split_token(url: str) -> tuple[str, str | None]:
    """(the URL without its ``token`` query parameter, that token or None)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tokens = [v for k, v in query if k == "token"]
    rest = urlencode([(k, v) for k, v in query if k != "token"])
    return urlunsplit(parts._replace(query=rest)), (tokens[-1] if tokens else None)


def line(u: Update) -> str:
    doc = {"token": u.token, "kind": u.kind, "partition": u.partition, "offset": u.offset, "ts": u.ts}
    if isinstance(u.data, bytes):
        doc["data_b64"] = base64.b64encode(u.data).decode()
    else:
        doc["data"] = u.data
    return json.dumps(doc, separators=(",", ":"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devstack.watch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", default=[],
                   help="front door or shard WebSocket URL; repeat or comma-separate for several "
                        f"(default {DEFAULT_URL})")
    p.add_argument("--count", type=int, default=0, help="exit after this many updates (0: never)")
    p.add_argument("--token", default=None,
                   help="JWT connection token (SHARDCAST_TOKEN keeps it out of the process list)")
    p.add_argument("tokens", nargs="+", help="tokens to subscribe to, e.g. BTC-USD")
    return p


def _report(name: str):
    def show(event: object) -> None:
        print(f"{name}: {event}", file=sys.stderr, flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    urls, jwt = [], a.token or os.environ.get("SHARDCAST_TOKEN") or None
    for given in a.url or [DEFAULT_URL]:
        for url in filter(None, (u.strip() for u in given.split(","))):
            bare, in_url = split_token(url)
            urls.append(bare)
            jwt = jwt or in_url
    client = Client(urls, token=jwt, tokens=a.tokens)
    for name in ("state", "gap", "error", "unsubscribed", "auth_failed"):
        client.on(name, _report(name))
    seen = 0
    try:
        with client:
            for u in client.updates():
                print(line(u), flush=True)
                seen += 1
                if a.count and seen >= a.count:
                    break
    except KeyboardInterrupt:
        pass
    except AuthFailedError as exc:
        print(f"authentication failed: {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    except ClientStoppedError as exc:
        print(f"stopped: {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
