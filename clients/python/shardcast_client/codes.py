"""Close codes, error codes and what the client does about each close: names in one place.

The shard's `shard/codes.py` is the authority; this package is installed on
its own (``pip install clients/python``), so it keeps its own copy of the
numbers. They only ever grow, and an unknown code falls back to backoff.
"""

from __future__ import annotations

from enum import Enum, IntEnum

SUBPROTOCOL = "shardcast.v1"


class Close(IntEnum):
    """WebSocket close codes the shard sends (RFC 6455 plus the 4000-4999 private range)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # shard shutting down: reconnect elsewhere at once
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006  # no close frame: the TCP connection just ended (never sent on the wire)
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # drained: go to another shard
    TRY_AGAIN_LATER = 1013
    CLIENT_TIMEOUT = 4000  # sent by this client: no pong in time (never by the shard)
    IDLE_TIMEOUT = 4001
    AUTH_FAILED = 4003
    SLOW_CONSUMER = 4008
    DATA_LOST = 4010
    TOKEN_EXPIRED = 4011
    AUTH_TIMEOUT = 4012
    RATE_LIMITED = 4029


class ErrorCode:
    """`code` strings of the shard's error frames, plus the client's own (never sent by a shard)."""

    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    CAPACITY = "capacity"
    TOO_MANY_TOKENS = "too_many_tokens"
    INVALID_TOKEN = "invalid_token"
    # Client-side codes of `error` events:
    INVALID_FRAME = "invalid_frame"  # a server frame that failed validation (dropped)
    TOKEN_HOOK = "token_hook"  # the get_token hook raised or gave nothing when asked for a refresh
    PROTOCOL = "protocol"  # the connection ended on a protocol error (either side's)
    HANDSHAKE = "handshake"  # the upgrade was refused or failed


class Policy(Enum):
    """What to do after a connection closed with a given code."""

    RECONNECT_NOW = "reconnect_now"  # another URL, no delay for the first attempt
    BACKOFF = "backoff"  # another URL after a capped, jittered delay
    RESUBSCRIBE_GAP = "resubscribe_gap"  # tell the app about the gap, then as BACKOFF
    REFRESH_TOKEN = "refresh_token"  # ask the token hook for a new token, then reconnect
    STOP_AUTH = "stop_auth"  # the token is refused: retrying cannot help
    STOP_PROTOCOL = "stop_protocol"  # the shard says this client sent garbage: a bug, not a blip


_POLICY: dict[int, Policy] = {
    Close.GOING_AWAY: Policy.RECONNECT_NOW,
    Close.SERVICE_RESTART: Policy.RECONNECT_NOW,
    Close.DATA_LOST: Policy.RESUBSCRIBE_GAP,
    Close.TOKEN_EXPIRED: Policy.REFRESH_TOKEN,
    Close.AUTH_FAILED: Policy.STOP_AUTH,
    Close.AUTH_TIMEOUT: Policy.STOP_AUTH,
    Close.PROTOCOL_ERROR: Policy.STOP_PROTOCOL,
    Close.UNSUPPORTED_DATA: Policy.STOP_PROTOCOL,
    Close.INVALID_PAYLOAD: Policy.STOP_PROTOCOL,
    Close.MESSAGE_TOO_BIG: Policy.STOP_PROTOCOL,
}


def close_policy(code: int) -> Policy:
    """The policy for a close code the *shard* sent (or 1006 when none came).

    Everything not listed — 4008 slow, 4029 flood, 4001 idle, 1006 abnormal,
    1011, codes added later — is a blip worth retrying with backoff. 4012 stops
    whether or not a token was sent: without one the shard wants a token this
    client does not have, with one it arrived too late to matter.
    """
    return _POLICY.get(code, Policy.BACKOFF)


def handshake_policy(status: int | None) -> Policy:
    """The policy for an upgrade the server refused with HTTP `status` (None: no answer at all).

    401 means a token in the URL was refused (this client sends its own in a
    message, after the upgrade): retrying cannot help. 503 (draining, full),
    429, 403 and network failures may all go away on another URL or later.
    """
    return Policy.STOP_AUTH if status == 401 else Policy.BACKOFF
