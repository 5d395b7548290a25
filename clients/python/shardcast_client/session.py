"""The client's decisions, without I/O: what to send, what to tell the app, where and when to dial.

Both adapters (the thread-based `Client` and the asyncio `AsyncClient`) feed
a `Session` what happened — a connection opened, a message arrived, time
passed, the connection closed — and carry out what it returns: texts to send,
a close to make, a token refresh to fetch, the next URL and delay to dial.
Events for the app pile up in `events` until the adapter takes them. Time
comes in as `now` (monotonic seconds); the wall clock and randomness are
injected, so every decision is tested with exact values.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shardcast_client.codes import Close, ErrorCode, Policy, close_policy, handshake_policy
from shardcast_client.config import ClientConfig
from shardcast_client.core import (
    AuthFailedEvent,
    Backoff,
    DuplicateEvent,
    ErrorEvent,
    GapEvent,
    Positions,
    Rand,
    StateEvent,
    Stats,
    UnsubscribedEvent,
    Update,
    UrlRing,
)
from shardcast_client.frames import (
    Ack,
    Authenticated,
    Data,
    Error,
    Invalid,
    auth_request,
    chunks,
    parse_frame,
    ping_request,
    subscribe_request,
    unsubscribe_request,
    valid_token,
)

AUTH_NONE, AUTH_STATIC, AUTH_HOOK = "none", "static", "hook"


@dataclass(frozen=True, slots=True)
class Dial:
    """Where to connect next and after how long."""

    url: str
    delay_s: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Stopped:
    """Why the client stopped for good; `by_user` after close()."""

    code: int
    reason: str
    by_user: bool = False
    auth: bool = False


@dataclass
class Actions:
    """What the adapter must do now: send these texts, maybe close, maybe fetch a fresh token."""

    sends: list[str] = field(default_factory=list)
    close: tuple[int, str] | None = None
    refresh: bool = False


@dataclass
class _Request:
    op: str
    tokens: tuple[str, ...]
    text: str
    req_id: int
    tries: int = 0


@dataclass
class _Conn:
    """One connection's state; a new one per connection."""

    url: str
    opened_at: float
    last_rx: float
    subprotocol: str | None
    open: bool = False  # authenticated (or no auth): subscribes may go out
    connected: bool = False
    ping_at: float | None = None
    refresh_at: float | None = None
    refreshing: bool = False
    closing: str | None = None  # why this client asked to close it
    pending: OrderedDict[int, _Request] = field(default_factory=OrderedDict)
    initial: set[int] = field(default_factory=set)  # resubscribe requests not answered yet
    subscribed: set[str] = field(default_factory=set)
    retries: list[tuple[float, _Request]] = field(default_factory=list)


class Session:
    """The desired subscriptions, positions and connection lifecycle of one client."""

    def __init__(self, urls: Iterable[str], cfg: ClientConfig | None = None, *, auth: str = AUTH_NONE,
                 tokens: Iterable[str] = (), rand: Rand = random.random,
                 wall: Callable[[], float] = time.time) -> None:
        if auth not in (AUTH_NONE, AUTH_STATIC, AUTH_HOOK):
            raise ValueError(f"auth must be one of none/static/hook, not {auth!r}")
        self.cfg = cfg or ClientConfig()
        self.auth = auth
        self.wall = wall
        self.ring = UrlRing(list(urls), rand)
        self.backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s, rand)
        self.positions = Positions()
        self.stats = Stats()
        self.desired: dict[str, None] = {}
        self.events: list[tuple[str, Any]] = []
        self.conn: _Conn | None = None
        self.stopped: Stopped | None = None
        self.last_code: int | None = None
        self.state: str | None = None  # of the last state event
        self._next: Dial | None = Dial(self.ring.current, 0.0, 0)
        self._ids = 0
        self.subscribe(tokens)

    # -- the app's side ---------------------------------------------------------------------------
    def subscribe(self, tokens: Iterable[str]) -> list[str]:
        """Add to the desired set; the texts to send now (none unless a connection is open).

        A token already desired but not subscribed on this connection (refused
        with `capacity`, say) is asked for again.
        """
        tokens = _checked(tokens)
        self.desired.update(dict.fromkeys(tokens))
        conn = self.conn
        if conn is None or not conn.open or conn.closing:
            return []
        ask = [t for t in tokens if t not in conn.subscribed]
        return [self._request(conn, "subscribe", c).text for c in chunks(ask, self.cfg.chunk_tokens)]

    def unsubscribe(self, tokens: Iterable[str]) -> list[str]:
        """Leave the desired set (and forget the positions: a later subscribe starts afresh)."""
        gone = [t for t in _checked(tokens) if t in self.desired]
        for t in gone:
            del self.desired[t]
        self.positions.forget(gone)
        conn = self.conn
        if not gone or conn is None or not conn.open or conn.closing:
            return []
        conn.subscribed.difference_update(gone)
        return [self._request(conn, "unsubscribe", c).text for c in chunks(gone, self.cfg.chunk_tokens)]

    def close(self) -> None:
        """Stop for good (the adapter closes the socket with 1000)."""
        if self.stopped is None:
            self._stop(Stopped(Close.NORMAL, "closed by the client", by_user=True))

    def take_events(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events

    # -- dialing ------------------------------------------------------------------------------------
    def next_dial(self) -> Dial | None:
        """Where and when to connect next; None once stopped."""
        return None if self.stopped is not None else self._next

    def connecting(self, url: str) -> None:
        self._emit("state", StateEvent("connecting", url, self.backoff.attempt))

    def token_missing(self) -> None:
        """get_token gave nothing before a dial: there is no token to connect with, so stop."""
        code = Close.TOKEN_EXPIRED if self.last_code == Close.TOKEN_EXPIRED else Close.AUTH_FAILED
        self._stop(Stopped(code, "get_token gave no token", auth=True))

    def token_failed(self, reason: str) -> None:
        """get_token raised before a dial: maybe passing (its server is down), so back off."""
        self._emit("error", ErrorEvent(ErrorCode.TOKEN_HOOK, reason[:256]))
        self._reconnect(Policy.BACKOFF, None, reason)

    def connect_failed(self, status: int | None, reason: str) -> None:
        """The upgrade was refused with HTTP `status`, or never answered (None)."""
        if handshake_policy(status) is Policy.STOP_AUTH:
            self._stop(Stopped(status or 0, reason[:256], auth=True))
        else:
            self._reconnect(Policy.BACKOFF, None, reason)

    def opened(self, url: str, subprotocol: str | None, token: str | None, now: float) -> list[str]:
        """A connection is up: authenticate first when there is a token, else resubscribe."""
        conn = self.conn = _Conn(url, now, now, subprotocol)
        if token:
            return [self._request(conn, "auth", (), token).text]
        return self._open(conn)

    # -- a live connection -----------------------------------------------------------------------
    def received(self, message: str | bytes, now: float) -> Actions:
        acts = Actions()
        conn = self.conn
        if conn is None:
            return acts
        conn.last_rx = now
        conn.ping_at = None  # any frame proves the connection alive
        frame = parse_frame(message, self.cfg.max_frame_bytes)
        if isinstance(frame, Data):
            self._data(frame)
        elif isinstance(frame, Ack):
            self._ack(conn, frame)
        elif isinstance(frame, Authenticated):
            self._authenticated(conn, frame, now, acts)
        elif isinstance(frame, Error):
            self._error(conn, frame, now, acts)
        elif isinstance(frame, Invalid):
            self.stats.invalid_frames += 1
            self._emit("error", ErrorEvent(ErrorCode.INVALID_FRAME, frame.reason))
        return acts

    def tick(self, now: float) -> Actions:
        """Time passed: keepalive pings, the pong deadline, token refresh, retries that are due."""
        acts = Actions()
        conn = self.conn
        if conn is None or conn.closing:
            return acts
        cfg = self.cfg
        if conn.ping_at is not None and now - conn.ping_at >= cfg.pong_timeout_s:
            conn.closing = f"nothing received for {cfg.pong_timeout_s:g} s after a ping"
            acts.close = (Close.CLIENT_TIMEOUT, conn.closing)
            return acts
        if conn.ping_at is None and now - conn.last_rx >= cfg.ping_interval_s:
            conn.ping_at = now
            acts.sends.append(self._request(conn, "ping", ()).text)
        if conn.refresh_at is not None and now >= conn.refresh_at and not conn.refreshing:
            conn.refresh_at = None
            conn.refreshing = True
            acts.refresh = True
        due = [r for at, r in conn.retries if at <= now]
        if due:
            conn.retries = [(at, r) for at, r in conn.retries if at > now]
            for req in due:
                conn.pending[req.req_id] = req
                acts.sends.append(req.text)
        return acts

    def deadline(self, now: float) -> float:
        """Seconds until `tick` has something to do (the adapter's receive timeout)."""
        conn = self.conn
        if conn is None or conn.closing:  # nothing to do but wait for the close to finish
            return self.cfg.ping_interval_s
        cfg = self.cfg
        at = [conn.last_rx + cfg.ping_interval_s if conn.ping_at is None
              else conn.ping_at + cfg.pong_timeout_s]
        if conn.refresh_at is not None and not conn.refreshing:
            at.append(conn.refresh_at)
        at.extend(due for due, _ in conn.retries)
        return max(0.0, min(at) - now)

    def refreshed(self, token: str | None) -> list[str]:
        """The token hook's answer to a refresh: send it on the live connection, or report nothing came.

        Without a new token the connection lives until the old one expires
        (4011); the hook is asked again before the reconnect.
        """
        conn = self.conn
        if conn is None or conn.closing:
            return []
        if not token:
            conn.refreshing = False
            self._emit("error", ErrorEvent(ErrorCode.TOKEN_HOOK, "get_token gave no token for the refresh"))
            return []
        return [self._request(conn, "auth", (), token).text]

    def closed(self, code: int, reason: str, now: float, by_peer: bool = True) -> None:
        """The connection ended: decide between reconnecting (where, after how long) and stopping.

        `by_peer` is False when this side closed first: on its own request
        (no pong) or because the server broke the protocol (a frame too big,
        not UTF-8); then the code says nothing about what the shard wants.
        """
        conn, self.conn = self.conn, None
        self.last_code = code
        if self.stopped is not None:
            return
        if conn is not None and now - conn.opened_at >= self.cfg.stable_after_s:
            self.backoff.reset()
        if not by_peer or (conn is not None and conn.closing):
            if conn is None or not conn.closing:
                self._emit("error", ErrorEvent(ErrorCode.PROTOCOL, f"closed by this client with {code}: "
                                                                  f"{reason[:200]}"))
            self._reconnect(Policy.BACKOFF, code, reason)
            return
        policy = close_policy(code)
        if policy is Policy.STOP_AUTH:
            self._stop(Stopped(code, reason, auth=True))
        elif policy is Policy.STOP_PROTOCOL:
            self._emit("error", ErrorEvent(code, reason or "protocol error"))
            self._stop(Stopped(code, reason))
        elif policy is Policy.REFRESH_TOKEN and self.auth != AUTH_HOOK:
            self._stop(Stopped(code, reason or "token expired", auth=True))
        else:
            if policy is Policy.RESUBSCRIBE_GAP:
                lost = tuple(sorted(conn.subscribed & self.desired.keys())) if conn else ()
                self.stats.gaps += 1
                self._emit("gap", GapEvent(lost, code))
            self._reconnect(policy, code, reason)

    # -- frames -------------------------------------------------------------------------------------
    def _data(self, f: Data) -> None:
        if f.token not in self.desired:
            return  # unsubscribed meanwhile: frames still in flight are not the app's any more
        update = Update(f.token, f.kind, f.data, f.partition, f.offset, f.ts, int(self.wall() * 1000))
        if not self.positions.accept(update):
            self.stats.duplicates += 1
            self._emit("duplicate", DuplicateEvent(f.token, f.partition, f.offset))
            return
        self.stats.updates += 1
        if f.kind == "resync":
            self.stats.resyncs += 1
        self._emit("update", update)

    def _ack(self, conn: _Conn, f: Ack) -> None:
        if f.type == "unsubscribed" and f.reason is not None:  # a narrowed grant: not a reply
            gone = [t for t in f.tokens if t in self.desired]
            for t in gone:
                del self.desired[t]
            self.positions.forget(gone)
            conn.subscribed.difference_update(f.tokens)
            self._emit("unsubscribed", UnsubscribedEvent(f.tokens, f.reason))
            return
        req = self._reply(conn, f.req_id)
        if f.type == "subscribed":
            conn.subscribed.update(t for t in f.tokens if t in self.desired)
        if req is not None:
            self._answered(conn, req)

    def _authenticated(self, conn: _Conn, f: Authenticated, now: float, acts: Actions) -> None:
        req = self._reply(conn, f.req_id)
        conn.refreshing = False
        if self.auth == AUTH_HOOK:
            ttl = f.expires - self.wall()
            lead = min(self.cfg.refresh_before_s, max(ttl, 0.0) / 2)  # short tokens: at half-life
            conn.refresh_at = now + max(0.0, ttl - lead)
        if not conn.open:
            acts.sends.extend(self._open(conn))
        if req is not None:
            self._answered(conn, req)

    def _error(self, conn: _Conn, f: Error, now: float, acts: Actions) -> None:
        req = self._reply(conn, f.req_id)
        if req is None:
            self._emit("error", ErrorEvent(f.code, f.message, f.tokens))
            return
        if f.code == ErrorCode.RATE_LIMITED and req.tries < self.cfg.max_retries:
            req.tries += 1
            conn.retries.append((now + self.cfg.retry_s * req.tries, req))
            return  # still unanswered: `connected` waits for it
        if req.op == "auth":
            conn.refreshing = False
            if not conn.open:  # e.g. a shard with auth off: carry on without
                acts.sends.extend(self._open(conn))
        if req.op == "subscribe" and f.code == ErrorCode.FORBIDDEN:
            denied = set(f.tokens or req.tokens)
            for t in denied:
                self.desired.pop(t, None)
            # Nothing of the request was subscribed: ask again for the allowed part.
            rest = tuple(t for t in req.tokens if t not in denied and t in self.desired)
            if rest:
                again = self._request(conn, "subscribe", rest)
                if req.req_id in conn.initial:
                    conn.initial.add(again.req_id)
                acts.sends.append(again.text)
            self._emit("error", ErrorEvent(f.code, f.message, tuple(sorted(denied))))
        else:
            self._emit("error", ErrorEvent(f.code, f.message, f.tokens or req.tokens))
        self._answered(conn, req)

    # -- helpers ------------------------------------------------------------------------------------
    def _open(self, conn: _Conn) -> list[str]:
        """Authenticated (or no auth needed): resubscribe the whole desired set, in chunks."""
        conn.open = True
        sends = []
        for c in chunks(list(self.desired), self.cfg.chunk_tokens):
            req = self._request(conn, "subscribe", c)
            conn.initial.add(req.req_id)
            sends.append(req.text)
        if not conn.initial:
            self._connected(conn)
        return sends

    def _request(self, conn: _Conn, op: str, tokens: tuple[str, ...], token: str = "") -> _Request:
        self._ids += 1
        rid = self._ids
        text = {"subscribe": lambda: subscribe_request(tokens, rid),
                "unsubscribe": lambda: unsubscribe_request(tokens, rid),
                "ping": lambda: ping_request(rid),
                "auth": lambda: auth_request(token, rid)}[op]()
        req = _Request(op, tokens, text, rid)
        conn.pending[rid] = req
        return req

    def _reply(self, conn: _Conn, req_id: int | None) -> _Request | None:
        """The request a reply answers: by its id, else the oldest pending one.

        The shard answers requests one at a time, in order, so a reply without
        an id (its `rate_limited` error) belongs to the oldest unanswered request.
        """
        if req_id is not None:
            return conn.pending.pop(req_id, None)
        if conn.pending:
            return conn.pending.popitem(last=False)[1]
        return None

    def _answered(self, conn: _Conn, req: _Request) -> None:
        conn.initial.discard(req.req_id)
        if conn.open and not conn.initial and not conn.connected:
            self._connected(conn)

    def _connected(self, conn: _Conn) -> None:
        conn.connected = True
        if conn.subscribed:
            self.backoff.reset()
        self._emit("state", StateEvent("connected", conn.url, self.backoff.attempt,
                                       subprotocol=conn.subprotocol))

    def _reconnect(self, policy: Policy, code: int | None, reason: str) -> None:
        """Plan the next dial: another URL (the same after 4011: only the token was old).

        After 1001/1012/4011 the first attempt goes at once; should it fail
        too, the attempts after it back off as usual.
        """
        if policy in (Policy.RECONNECT_NOW, Policy.REFRESH_TOKEN) and self.backoff.attempt == 0:
            delay = 0.0
            self.backoff.attempt = 1
        else:
            delay = self.backoff.next_delay_s()
        url = self.ring.current if policy is Policy.REFRESH_TOKEN else self.ring.advance()
        self.stats.reconnects += 1
        self._next = Dial(url, delay, self.backoff.attempt)
        self._emit("state", StateEvent("reconnecting", url, self.backoff.attempt, round(delay * 1000),
                                       code, reason[:256]))

    def _stop(self, stopped: Stopped) -> None:
        self.stopped = stopped
        self._next = None
        if stopped.auth:
            self._emit("auth_failed", AuthFailedEvent(stopped.code, stopped.reason))
        self._emit("state", StateEvent("closed", None, self.backoff.attempt, 0, stopped.code,
                                       stopped.reason))

    def _emit(self, name: str, payload: Any) -> None:
        if name == "state":
            self.state = payload.state
        self.events.append((name, payload))


def _checked(tokens: Iterable[str]) -> tuple[str, ...]:
    """The app's tokens, each checked (a bad one is a bug in the app: refuse it at once)."""
    if isinstance(tokens, str):
        tokens = (tokens,)
    out = tuple(dict.fromkeys(tokens))
    bad = [t for t in out if not valid_token(t)]
    if bad:
        raise ValueError(f"invalid token(s) {bad[:5]!r}: 1-64 of A-Z a-z 0-9 . _ : / -")
    return out
