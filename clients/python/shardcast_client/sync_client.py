"""The thread-based client: a background thread owns the connection; the app iterates updates.

The thread runs the `Session`'s decisions over `websockets.sync.client`. One
lock guards the session and every send, so requests from the app's thread
(subscribe, unsubscribe) and from the connection's thread go out in the
order the session decided them. Listeners run on the background thread,
outside the lock, so they may call back into the client.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from shardcast_client._common import (
    call_listeners,
    close_info,
    connect_options,
    handshake_status,
    log,
    make_session,
    stopped_error,
)
from shardcast_client.codes import Close
from shardcast_client.config import ClientConfig
from shardcast_client.core import Listeners, Rand, Stats, Update, UpdateBuffer
from shardcast_client.session import AUTH_NONE, Actions


class Client:
    """A shardcast client on a background thread.

    >>> with Client(["ws://127.0.0.1:8701/ws"], token=jwt, tokens=["BTC-USD"]) as c:
    ...     for u in c.updates():
    ...         print(u.token, u.data)

    `get_token` (a plain callable; may return None to give up) is asked before
    every connection and before the token expires. `connect_options` go to
    `websockets.sync.client.connect` (ssl, additional_headers, proxy, ...).
    """

    def __init__(self, urls: str | Sequence[str], *, token: str | None = None,
                 get_token: Callable[[], str | None] | None = None, tokens: Iterable[str] = (),
                 config: ClientConfig | None = None, rand: Rand | None = None,
                 connect_options: dict[str, Any] | None = None) -> None:
        self._session = make_session(urls, token, get_token, tokens, config, rand)
        self._cfg = self._session.cfg
        self._token = token
        self._get_token = get_token
        self._options = connect_options
        self._listeners = Listeners()
        self._lock = threading.RLock()  # the session and every send
        self._ready = threading.Condition()  # the update buffer
        self._buffer = UpdateBuffer(self._cfg.max_pending, self._session.stats)
        self._closing = threading.Event()
        self._ws: ClientConnection | None = None
        self._thread: threading.Thread | None = None

    # -- the app's side ---------------------------------------------------------------------------
    def on(self, name: str, fn: Callable[[Any], object]) -> Callable[[], None]:
        """Call `fn(payload)` on every event `name` (see README); returns a function that stops it."""
        return self._listeners.add(name, fn)

    def subscribe(self, tokens: Iterable[str]) -> None:
        with self._lock:
            self._send(self._session.subscribe(tokens))

    def unsubscribe(self, tokens: Iterable[str]) -> None:
        with self._lock:
            self._send(self._session.unsubscribe(tokens))

    def connect(self) -> Client:
        """Start the background thread (once); returns at once, connecting goes on in the thread."""
        if self._session.stopped is not None:
            raise RuntimeError("this client was closed; make a new one")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shardcast-client", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop for good: close the connection with 1000 and end the thread (no reconnect)."""
        with self._lock:
            self._session.close()
            ws = self._ws
        self._closing.set()
        if ws is not None:
            ws.close(Close.NORMAL, "client closed")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self._dispatch()
        with self._ready:
            self._ready.notify_all()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def updates(self, timeout_s: float | None = None) -> Iterator[Update]:
        """Yield updates in order until close(); TimeoutError when none comes within `timeout_s`.

        Ends normally after close(); raises ClientStoppedError (AuthFailedError
        for a refused token) once the client stopped on its own, after the
        updates it buffered. When the app is slower than the feed, the buffer
        conflates per token (see UpdateBuffer; `stats.conflated`).
        """
        while True:
            update = self.next_update(timeout_s)
            if update is None:
                return
            yield update

    def next_update(self, timeout_s: float | None = None) -> Update | None:
        """The next update; None once closed by close() and drained (errors as `updates`)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._ready:
            while True:
                update = self._buffer.pop()
                if update is not None:
                    return update
                stopped = self._session.stopped
                if stopped is not None:
                    if stopped.by_user:
                        return None
                    raise stopped_error(stopped)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no update within {timeout_s} s")
                self._ready.wait(left)

    def last(self, token: str) -> Update | None:
        """The last update accepted for `token` (also when the buffer conflated it away)."""
        with self._lock:
            return self._session.positions.last(token)

    @property
    def stats(self) -> Stats:
        """A copy of the counters (updates, duplicates, reconnects, resyncs, gaps, conflated, ...)."""
        with self._lock:
            return replace(self._session.stats)

    @property
    def state(self) -> str | None:
        """The last state event's state (None before the first)."""
        return self._session.state

    @property
    def subscriptions(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._session.desired)

    # -- the background thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    dial = self._session.next_dial()
                if dial is None:
                    return
                if dial.delay_s and self._closing.wait(dial.delay_s):
                    continue  # closed while waiting: next_dial says so
                self._connect_once(dial.url)
        except Exception:  # a bug here must not leave the app waiting forever
            log.exception("shardcast_client: the connection thread failed")
            with self._lock:
                self._session.close()
        finally:
            self._dispatch()
            with self._ready:
                self._ready.notify_all()

    def _connect_once(self, url: str) -> None:
        token = self._fetch_token(before_dial=True)
        if token is False:
            return
        with self._lock:
            if self._session.stopped is not None:
                return
            self._session.connecting(url)
        self._dispatch()
        try:
            # legacy=True: a plain connection; the session, not websockets, decides on reconnects.
            ws = connect(url, legacy=True, **connect_options(self._cfg, self._options))
        except (OSError, WebSocketException) as exc:
            with self._lock:
                self._session.connect_failed(handshake_status(exc), f"{type(exc).__name__}: {exc}")
            self._dispatch()
            return
        with self._lock:
            if self._session.stopped is not None:
                ws.close(Close.NORMAL, "client closed")
                return
            self._ws = ws
            self._send(self._session.opened(url, ws.subprotocol, token or None, time.monotonic()))
        self._dispatch()
        code, reason, by_peer = self._serve(ws)
        with self._lock:
            self._ws = None
            self._session.closed(code, reason, time.monotonic(), by_peer)
        self._dispatch()

    def _serve(self, ws: ClientConnection) -> tuple[int, str, bool]:
        """Read until the connection ends; return its (code, reason, by_peer)."""
        while True:
            with self._lock:
                timeout = self._session.deadline(time.monotonic())
            try:
                message = ws.recv(timeout=timeout)
            except TimeoutError:
                with self._lock:
                    acts = self._session.tick(time.monotonic())
                    self._send(acts.sends)
            except ConnectionClosed as exc:
                return close_info(exc)
            else:
                with self._lock:
                    acts = self._session.received(message, time.monotonic())
                    self._send(acts.sends)
            self._dispatch()
            self._follow_up(ws, acts)

    def _follow_up(self, ws: ClientConnection, acts: Actions) -> None:
        """What may block goes outside the lock: fetching a fresh token, a close handshake."""
        if acts.refresh:
            token = self._fetch_token(before_dial=False)
            with self._lock:
                self._send(self._session.refreshed(token or None))
            self._dispatch()
        if acts.close is not None:
            ws.close(*acts.close)

    def _fetch_token(self, before_dial: bool) -> str | bool | None:
        """The token to send: None without auth; False when the dial must not go ahead."""
        if self._session.auth == AUTH_NONE:
            return None
        if self._get_token is None:
            return self._token
        try:
            token = self._get_token()
            if inspect.isawaitable(token):
                raise TypeError("get_token returned an awaitable: use AsyncClient for async hooks")
        except Exception as exc:
            if not before_dial:
                return None  # the session reports the missing refresh
            with self._lock:
                self._session.token_failed(f"get_token raised {type(exc).__name__}: {exc}")
            self._dispatch()
            return False
        if before_dial and not (isinstance(token, str) and token):
            with self._lock:
                self._session.token_missing()
            self._dispatch()
            return False
        return token if isinstance(token, str) else None

    def _send(self, texts: list[str]) -> None:
        """Send under the lock (callers hold it); a closed socket is the reader's to notice."""
        ws = self._ws
        if ws is None:
            return
        for text in texts:
            try:
                ws.send(text)
            except (ConnectionClosed, OSError):
                return

    def _dispatch(self) -> None:
        """Hand the session's events to the buffer and the listeners, in order, outside the lock."""
        with self._lock:
            events = self._session.take_events()
        if not events:
            return
        updates = [p for n, p in events if n == "update"]
        if updates or any(n == "state" and p.state == "closed" for n, p in events):
            with self._ready:
                for u in updates:
                    self._buffer.push(u)
                self._ready.notify_all()
        for name, payload in events:
            call_listeners(self._listeners, name, payload)
