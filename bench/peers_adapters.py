"""Protocol adapters of the peers benchmark: what a client sends to subscribe, how it reads ticks.

Pure, bytes in and bytes out, so the load generator (bench/peers_fleet.py)
and the unit tests share them. Every system carries the producer's record
value verbatim (`{"q":<per-token sequence>,"t":<producer µs>,...}`), so the
checks on sequence and latency are the same for all; only the envelope
differs:

* `shardcast` (also spoken by the two Python floors): one subscribe request,
  one `{"type":"subscribed"...}` ack, one tick per WebSocket frame.
* `centrifugo`: Centrifugo's JSON protocol — a connect command, then one
  subscribe command per channel (a channel per token), each acked by id;
  publications arrive as pushes, several of them newline-separated in one
  frame; the server's application-level ping is `{}` and wants `{}` back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from bench.workload import parse_tick

Tick = tuple[str, int, int]  # token, per-token sequence number, producer timestamp (µs)


@dataclass(frozen=True)
class Control:
    """What a non-tick message means to the client: acks counted, a reply owed, an error seen."""

    acks: int = 0
    reply: bytes | None = None
    error: str | None = None
    other: bool = False


class ShardcastAdapter:
    """shardcast's client protocol (README "Client protocol"); the floors speak the same subset."""

    name = "shardcast"
    path = "/ws"

    def hello(self, tokens: list[str]) -> list[bytes]:
        return [json.dumps({"op": "subscribe", "tokens": tokens}).encode()]

    def acks_needed(self, tokens: list[str]) -> int:
        return 1

    def parse(self, payload: bytes) -> tuple[list[Tick], list[bytes]]:
        """(ticks, control messages) of one WebSocket message: a frame is one tick or one control."""
        tick = parse_tick(payload)
        return ([tick], []) if tick is not None else ([], [payload])

    def control(self, msg: bytes) -> Control:
        if msg.startswith(b'{"type":"subscribed"'):
            return Control(acks=1)
        if msg.startswith(b'{"type":"error"'):
            m = re.search(rb'"code":"([^"]*)"', msg)
            return Control(error=f"server_error_{m[1].decode() if m else '?'}")
        return Control(other=True)


# Centrifugo 6's JSON encoding of a push: channel first, then the publication; `data` holds the
# Kafka record value as raw JSON (publication data mode). Optional publication fields (offset,
# info, tags) may stand before `data`, so the pattern skips anything without a newline.
PUSH_RE = re.compile(rb'\{"push":\{"channel":"([^"]+)","pub":\{[^\n]*?"data":\{"q":(\d+),"t":(\d+)')


class CentrifugoAdapter:
    """Centrifugo's bidirectional JSON protocol over /connection/websocket, anonymous (insecure mode)."""

    name = "centrifugo"
    path = "/connection/websocket"

    def hello(self, tokens: list[str]) -> list[bytes]:
        """Connect and every subscribe in one message (the JSON protocol takes newline-separated
        commands), so a client costs one send, like shardcast's single subscribe request."""
        cmds = [{"id": 1, "connect": {}}]
        cmds += [{"id": i + 2, "subscribe": {"channel": t}} for i, t in enumerate(tokens)]
        return [b"\n".join(json.dumps(c, separators=(",", ":")).encode() for c in cmds)]

    def acks_needed(self, tokens: list[str]) -> int:
        return len(tokens)

    def parse(self, payload: bytes) -> tuple[list[Tick], list[bytes]]:
        ticks = [(m[1].decode(), int(m[2]), int(m[3])) for m in PUSH_RE.finditer(payload)]
        if len(ticks) == payload.count(b"\n") + 1:
            return ticks, []  # the common case: nothing but pushes
        rest = [ln for ln in payload.split(b"\n") if ln and not PUSH_RE.match(ln)]
        return ticks, rest

    def control(self, msg: bytes) -> Control:
        if msg == b"{}":
            return Control(reply=b"{}")  # server ping: answer with a pong
        if b'"error"' in msg:
            m = re.search(rb'"code":(\d+)', msg)
            return Control(error=f"server_error_{m[1].decode() if m else '?'}")
        if msg.startswith(b'{"id":') and b'"subscribe":' in msg:
            return Control(acks=1)
        return Control(other=True)


ADAPTERS = {"shardcast": ShardcastAdapter(), "centrifugo": CentrifugoAdapter()}
