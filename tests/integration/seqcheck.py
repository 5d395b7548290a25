"""A steady tick feed with per-token sequence numbers, and clients that check every frame of it.

The fault tests inject a fault while the feed runs, then stop the feed and
check, per (client, token): no tick twice, no gap the client was not told of
(only a snapshot marked `resync`, or a close code, may skip values), and the
client ends on the token's final value.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import websocket

from tests.integration.helpers import producer


class TickFeed:
    """Produces {"s": n} to each token in turn, `rate_per_s` records a second, until stopped."""

    def __init__(self, bootstrap: str, topic: str, tokens: list[str], rate_per_s: float) -> None:
        self.p = producer(bootstrap)
        self.topic = topic
        self.tokens = tokens
        self.rate_per_s = rate_per_s
        self.sent = dict.fromkeys(tokens, 0)  # last seq produced per token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TickFeed:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1 / self.rate_per_s
        due = time.monotonic()
        while not self._stop.is_set():
            for token in self.tokens:
                self.sent[token] += 1
                self.p.send(self.topic, key=token.encode(), value=b'{"s":%d}' % self.sent[token])
                due += interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.p.flush(30)

    def stop(self) -> dict[str, int]:
        """Stop after the current round; return the final seq of each token (all flushed)."""
        self._stop.set()
        self._thread.join(30)
        self.p.flush(30)
        return dict(self.sent)


@dataclass
class Seen:
    """What one client saw of one token."""

    last: int = 0
    ticks: int = 0
    duplicates: int = 0
    silent_gaps: int = 0  # ticks skipped with no resync or close to say so
    resyncs: int = 0
    partition: int = -1
    last_at: float = 0.0  # time.monotonic() of the last frame
    max_pause_s: float = 0.0  # longest time between two frames since the last reset


@dataclass
class Watcher:
    """A WebSocket client subscribed to `tokens`, checking every frame on a thread of its own."""

    url: str
    tokens: list[str]
    seen: dict[str, Seen] = field(default_factory=dict)
    close_code: int | None = None
    error: str = ""

    def __post_init__(self) -> None:
        self.seen = {t: Seen() for t in self.tokens}
        self.ws = websocket.create_connection(self.url, timeout=60)
        self.ws.send(json.dumps({"op": "subscribe", "tokens": self.tokens, "id": 1}))
        while json.loads(self.ws.recv()).get("type") != "subscribed":
            pass
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                op, frame = self.ws.recv_data_frame(True)
                if op == websocket.ABNF.OPCODE_CLOSE:
                    self.close_code = int.from_bytes(frame.data[:2], "big")
                    return
                if op == websocket.ABNF.OPCODE_TEXT:
                    self._check(json.loads(frame.data))
        except (OSError, websocket.WebSocketException) as exc:
            self.error = repr(exc)

    def _check(self, doc: dict) -> None:
        kind = doc.get("type")
        if kind not in ("tick", "snapshot"):
            return
        s = self.seen[doc["token"]]
        now = time.monotonic()
        if s.last_at:
            s.max_pause_s = max(s.max_pause_s, now - s.last_at)
        s.last_at = now
        s.partition = doc.get("partition", -1)
        seq = doc["data"]["s"]
        if seq <= s.last:
            s.duplicates += 1
            return
        if kind == "tick":
            s.ticks += 1
            if s.last and seq != s.last + 1:
                s.silent_gaps += seq - s.last - 1
        elif doc.get("resync"):
            s.resyncs += 1
        s.last = seq

    def reset_pauses(self) -> None:
        for s in self.seen.values():
            s.max_pause_s = 0.0

    def holds(self, final: dict[str, int]) -> bool:
        """True once the client's value of every token is the final one produced."""
        return all(self.seen[t].last == final[t] for t in self.tokens)

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(s, k) for s in self.seen.values())
                for k in ("ticks", "duplicates", "silent_gaps", "resyncs")}

    def close(self) -> None:
        self.ws.close()
