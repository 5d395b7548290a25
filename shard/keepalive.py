"""Server-side keepalive decisions: ping quiet clients, close silent ones. Pure.

A client that vanished without closing (power loss, NAT timeout) would
otherwise keep its socket, memory and subscriptions forever when its tokens
are quiet. Any inbound frame (requests, pongs) counts as life.
"""

from __future__ import annotations

from enum import Enum


class Action(Enum):
    NONE = 0
    PING = 1
    CLOSE = 2


def keepalive_action(now: float, last_rx: float, last_ping: float,
                     ping_interval_s: float, idle_timeout_s: float) -> Action:
    """What to do with a connection last heard from at `last_rx` and last pinged at `last_ping`."""
    quiet_s = now - last_rx
    if quiet_s >= idle_timeout_s:
        return Action.CLOSE
    if quiet_s >= ping_interval_s and now - last_ping >= ping_interval_s:
        return Action.PING
    return Action.NONE
