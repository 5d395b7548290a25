"""What the thread and asyncio adapters share: construction, websockets options, close info, listeners."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from shardcast_client.codes import SUBPROTOCOL, Close
from shardcast_client.config import ClientConfig
from shardcast_client.core import Listeners, Rand
from shardcast_client.errors import AuthFailedError, ClientStoppedError
from shardcast_client.session import AUTH_HOOK, AUTH_NONE, AUTH_STATIC, Session, Stopped

log = logging.getLogger("shardcast_client")


def make_session(urls: str | Sequence[str], token: str | None, get_token: Callable | None,
                 tokens: Iterable[str], config: ClientConfig | None, rand: Rand | None) -> Session:
    """Check the arguments (a bad URL or token is the app's bug: fail here, not in a thread later)."""
    url_list = [urls] if isinstance(urls, str) else list(urls)
    for u in url_list:
        try:
            parse_uri(u)
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {u!r}") from exc
    if token is not None and get_token is not None:
        raise ValueError("give token or get_token, not both")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("token must be a non-empty string")
    auth = AUTH_HOOK if get_token is not None else AUTH_STATIC if token is not None else AUTH_NONE
    return Session(url_list, config, auth=auth, tokens=tokens, rand=rand or random.random)


def connect_options(cfg: ClientConfig, extra: dict[str, Any] | None) -> dict[str, Any]:
    """websockets options: our subprotocol, our own keepalive (app-level ping, as browsers must), bounds."""
    return {
        "subprotocols": [SUBPROTOCOL],
        "open_timeout": cfg.open_timeout_s,
        "close_timeout": cfg.close_timeout_s,
        "ping_interval": None,  # the session pings with {"op":"ping"}; the shard's pings are answered
        "max_size": cfg.max_frame_bytes,
        "compression": None,  # the shard does not negotiate permessage-deflate
        **(extra or {}),
    }


def close_info(exc: ConnectionClosed) -> tuple[int, str, bool]:
    """(code, reason, by_peer) of a closed connection; 1006 when no close frame came.

    by_peer is False when this side sent its close frame first: the code is
    then ours (a pong timeout, or the server broke the protocol), not the shard's.
    """
    ours_first = exc.sent is not None and (exc.rcvd is None or not exc.rcvd_then_sent)
    if ours_first:
        return exc.sent.code, exc.sent.reason, False
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason, True
    return Close.ABNORMAL, "connection lost without a close frame", True


def handshake_status(exc: Exception) -> int | None:
    return exc.response.status_code if isinstance(exc, InvalidStatus) else None


def stopped_error(stopped: Stopped) -> ClientStoppedError:
    cls = AuthFailedError if stopped.auth else ClientStoppedError
    return cls(stopped.code, stopped.reason)


def call_listeners(listeners: Listeners, name: str, payload: Any) -> list[Any]:
    """Call every listener of `name`; one that raises is logged and the others still run.

    Returns what they returned (the asyncio adapter schedules awaitables).
    """
    results = []
    for fn in listeners.get(name):
        try:
            results.append(fn(payload))
        except Exception:
            log.exception("shardcast_client: %s listener %r raised", name, fn)
    return results
