"""The asyncio client: one task owns the connection; the app iterates with `async for`.

Everything runs on the event loop, so the `Session` needs no lock. A single
writer task per connection sends what the session decided, in order, whether
it came from the app (subscribe, unsubscribe) or from a received frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

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

MAX_OUTGOING = 10_000  # texts waiting for the writer; beyond, the connection is remade instead


class AsyncClient:
    """A shardcast client for asyncio.

    >>> async with AsyncClient(urls, get_token=fetch_jwt, tokens=["BTC-USD"]) as c:
    ...     async for u in c:
    ...         print(u.token, u.data)

    `get_token` may be a plain function or a coroutine function (None gives
    up). Listeners may be coroutine functions too: they are run as tasks.
    """

    def __init__(self, urls: str | Sequence[str], *, token: str | None = None,
                 get_token: Callable[[], Any] | None = None, tokens: Iterable[str] = (),
                 config: ClientConfig | None = None, rand: Rand | None = None,
                 connect_options: dict[str, Any] | None = None) -> None:
        self._session = make_session(urls, token, get_token, tokens, config, rand)
        self._cfg = self._session.cfg
        self._token = token
        self._get_token = get_token
        self._options = connect_options
        self._listeners = Listeners()
        self._buffer = UpdateBuffer(self._cfg.max_pending, self._session.stats)
        self._ready: asyncio.Event | None = None
        self._closing: asyncio.Event | None = None
        self._ws: ClientConnection | None = None
        self._out: asyncio.Queue[str] | None = None
        self._task: asyncio.Task | None = None
        self._listener_tasks: set[asyncio.Task] = set()

    # -- the app's side ---------------------------------------------------------------------------
    def on(self, name: str, fn: Callable[[Any], object]) -> Callable[[], None]:
        return self._listeners.add(name, fn)

    def subscribe(self, tokens: Iterable[str]) -> None:
        self._send(self._session.subscribe(tokens))

    def unsubscribe(self, tokens: Iterable[str]) -> None:
        self._send(self._session.unsubscribe(tokens))

    def connect(self) -> AsyncClient:
        """Start the connection task on the running loop (once); connecting goes on in it."""
        if self._session.stopped is not None:
            raise RuntimeError("this client was closed; make a new one")
        if self._task is None:
            self._ready, self._closing = asyncio.Event(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shardcast-client")
        return self

    async def close(self) -> None:
        """Stop for good: close the connection with 1000 and end the task (no reconnect)."""
        self._session.close()
        if self._closing is not None:
            self._closing.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(WebSocketException, OSError):
                await ws.close(Close.NORMAL, "client closed")
        if self._task is not None and self._task is not asyncio.current_task():
            await self._task
        self._dispatch()

    async def __aenter__(self) -> AsyncClient:
        return self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncClient:
        return self

    async def __anext__(self) -> Update:
        update = await self.next_update()
        if update is None:
            raise StopAsyncIteration
        return update

    async def updates(self, timeout_s: float | None = None) -> AsyncIterator[Update]:
        """As `Client.updates`: in order, TimeoutError after `timeout_s` without one, ends on close()."""
        while (update := await self.next_update(timeout_s)) is not None:
            yield update

    async def next_update(self, timeout_s: float | None = None) -> Update | None:
        """The next update; None once closed by close() and drained; ClientStoppedError if it stopped."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            update = self._buffer.pop()
            if update is not None:
                return update
            stopped = self._session.stopped
            if stopped is not None:
                if stopped.by_user:
                    return None
                raise stopped_error(stopped)
            if self._ready is None:
                raise RuntimeError("not connected: use `async with` or call connect() first")
            self._ready.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no update within {timeout_s} s")
            try:
                await asyncio.wait_for(self._ready.wait(), left)
            except TimeoutError:
                raise TimeoutError(f"no update within {timeout_s} s") from None

    def last(self, token: str) -> Update | None:
        return self._session.positions.last(token)

    @property
    def stats(self) -> Stats:
        return replace(self._session.stats)

    @property
    def state(self) -> str | None:
        return self._session.state

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return tuple(self._session.desired)

    # -- the connection task ------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while (dial := self._session.next_dial()) is not None:
                if dial.delay_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), dial.delay_s)
                    if self._session.stopped is not None:
                        break
                await self._connect_once(dial.url)
        except Exception:  # a bug here must not leave the app waiting forever
            log.exception("shardcast_client: the connection task failed")
            self._session.close()
        finally:
            self._dispatch()
            self._ready.set()

    async def _connect_once(self, url: str) -> None:
        token = await self._fetch_token(before_dial=True)
        if token is False or self._session.stopped is not None:
            self._dispatch()
            return
        self._session.connecting(url)
        self._dispatch()
        try:
            ws = await connect(url, **connect_options(self._cfg, self._options))
        except (OSError, TimeoutError, WebSocketException) as exc:
            self._session.connect_failed(handshake_status(exc), f"{type(exc).__name__}: {exc}")
            self._dispatch()
            return
        if self._session.stopped is not None:
            await ws.close(Close.NORMAL, "client closed")
            return
        self._ws, self._out = ws, asyncio.Queue()
        writer = asyncio.get_running_loop().create_task(self._write(ws, self._out))
        try:
            self._send(self._session.opened(url, ws.subprotocol, token or None, time.monotonic()))
            self._dispatch()
            code, reason, by_peer = await self._serve(ws)
        finally:
            self._ws = self._out = None
            writer.cancel()
        self._session.closed(code, reason, time.monotonic(), by_peer)
        self._dispatch()

    async def _serve(self, ws: ClientConnection) -> tuple[int, str, bool]:
        while True:
            timeout = self._session.deadline(time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    message = await ws.recv()
            except TimeoutError:
                acts = self._session.tick(time.monotonic())
            except ConnectionClosed as exc:
                return close_info(exc)
            else:
                acts = self._session.received(message, time.monotonic())
            self._send(acts.sends)
            self._dispatch()
            await self._follow_up(ws, acts)

    async def _follow_up(self, ws: ClientConnection, acts: Actions) -> None:
        if acts.refresh:
            token = await self._fetch_token(before_dial=False)
            self._send(self._session.refreshed(token or None))
            self._dispatch()
        if acts.close is not None:
            await ws.close(*acts.close)

    async def _write(self, ws: ClientConnection, out: asyncio.Queue[str]) -> None:
        """The only sender of a connection, so texts leave in the order they were queued."""
        while True:
            text = await out.get()
            try:
                await ws.send(text)
            except (ConnectionClosed, OSError):
                return

    def _send(self, texts: list[str]) -> None:
        out, ws = self._out, self._ws
        if out is None or ws is None:
            return
        for text in texts:
            if out.qsize() >= MAX_OUTGOING:  # the socket stalled: the next connection resubscribes anyway
                asyncio.get_running_loop().create_task(ws.close(Close.CLIENT_TIMEOUT, "send queue full"))
                return
            out.put_nowait(text)

    async def _fetch_token(self, before_dial: bool) -> str | bool | None:
        """The token to send: None without auth; False when the dial must not go ahead."""
        if self._session.auth == AUTH_NONE:
            return None
        if self._get_token is None:
            return self._token
        try:
            token = self._get_token()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:
            if not before_dial:
                return None
            self._session.token_failed(f"get_token raised {type(exc).__name__}: {exc}")
            return False
        if before_dial and not (isinstance(token, str) and token):
            self._session.token_missing()
            return False
        return token if isinstance(token, str) else None

    def _dispatch(self) -> None:
        events = self._session.take_events()
        if not events:
            return
        wake = False
        for name, payload in events:
            if name == "update":
                self._buffer.push(payload)
                wake = True
            elif name == "state" and payload.state == "closed":
                wake = True
            for result in call_listeners(self._listeners, name, payload):
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._listener_tasks.add(task)
                    task.add_done_callback(self._listener_done)
        if wake and self._ready is not None:
            self._ready.set()

    def _listener_done(self, task: asyncio.Task) -> None:
        self._listener_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shardcast_client: a listener task raised", exc_info=task.exception())
