"""Exceptions the client raises to the app (what happens on the wire is reported as events)."""

from __future__ import annotations


class ClientStoppedError(Exception):
    """The client stopped for good on its own (not by close()): raised by the update iterators.

    Its buffered updates were handed out first; `code` is the close code that
    stopped it (or the HTTP status of a refused upgrade).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"client stopped: {code} {reason}")
        self.code = code
        self.reason = reason


class AuthFailedError(ClientStoppedError):
    """The token was refused (4003, 4012, 4011 without a hook, HTTP 401) or get_token gave none."""
