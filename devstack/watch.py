"""Watch ticks from a shard: `python -m devstack.watch [--url ws://…/ws] TOKEN [TOKEN …]`."""

from __future__ import annotations

import argparse
import json
import sys

import websocket


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devstack.watch", description=__doc__)
    p.add_argument("--url", default="ws://127.0.0.1:8701/ws", help="shard WebSocket URL")
    p.add_argument("--count", type=int, default=0, help="exit after this many ticks (0: never)")
    p.add_argument("tokens", nargs="+", help="tokens to subscribe to, e.g. BTC-USD")
    a = p.parse_args(argv)
    ws = websocket.create_connection(a.url, timeout=30)
    ws.send(json.dumps({"op": "subscribe", "tokens": a.tokens, "id": 1}))
    seen = 0
    try:
        while a.count == 0 or seen < a.count:
            frame = ws.recv()
            print(frame, flush=True)
            seen += json.loads(frame).get("type") == "tick"
    except KeyboardInterrupt:
        pass
    except websocket.WebSocketException as exc:
        print(f"connection closed: {exc}", file=sys.stderr)
    finally:
        ws.close()


if __name__ == "__main__":
    main()
