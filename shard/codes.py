"""Every WebSocket close code and client error code the shard uses, in one place.

Clients key their behaviour on these: they are part of the protocol and only
ever grow.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Close(IntEnum):
    """WebSocket close codes (RFC 6455 §7.4 plus the 4000-4999 private range)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # shard shutting down: reconnect elsewhere at once
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  # binary or fragmented frames
    INVALID_PAYLOAD = 1007  # text frame that is not UTF-8
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # inbound frame over the shard's frame limit
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # drained: reconnect after a jittered pause
    TRY_AGAIN_LATER = 1013
    IDLE_TIMEOUT = 4001  # nothing received (not even a pong) for --idle-timeout-s
    AUTH_FAILED = 4003  # the token of an auth message is invalid (signature, claims, audience, issuer)
    SLOW_CONSUMER = 4008  # outbound queue overflowed: client could not keep up
    DATA_LOST = 4010  # ticks meant for this client were lost upstream with no value to resync with
    TOKEN_EXPIRED = 4011  # the connection's token expired (or an auth message carried an expired one)
    AUTH_TIMEOUT = 4012  # no valid token within --auth-timeout-s of the upgrade
    RATE_LIMITED = 4029  # kept sending after repeated rate-limit errors


class ErrorCode(StrEnum):
    """`code` of an error frame; the connection stays open after each of these."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_OP = "unknown_op"
    BAD_REQUEST = "bad_request"  # missing field or wrong type
    INVALID_TOKEN = "invalid_token"
    TOO_MANY_TOKENS = "too_many_tokens"  # per request or per connection
    RATE_LIMITED = "rate_limited"
    UNAUTHENTICATED = "unauthenticated"  # a request other than auth/ping before a valid token
    FORBIDDEN = "forbidden"  # subscribe to tokens outside the grant (nothing is subscribed)
    CAPACITY = "capacity"  # the shard carries --max-shard-tokens tokens (nothing is subscribed)
