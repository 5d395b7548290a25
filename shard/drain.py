"""Draining a shard: close its clients spread over a window, then wait until it is out of routing.

`common.drain.close_steps` is the pure schedule; `Drain` runs it in a
greenlet against the server's connections. Close code 1012
(`SERVICE_RESTART`) tells clients to come back after a jittered pause.

A drained shard stays registered (state ``drained``, still heartbeating, its
gRPC streams up) rather than deregistering: operators still see it in
``ListShards``, and ``Undrain`` can put it back into service at once, without
a restart. What takes it out of routing is its clients leaving: each last
subscriber of a token removes the shard from that token's route.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gevent

from common.drain import STEP_S, close_steps
from shard.codes import Close

log = logging.getLogger(__name__)
LINGER_S = 5.0  # after the last close frame: how long to wait for the sockets to go


@dataclass
class DrainStatus:
    """Progress of the shard's drain, read by the control RPC."""

    window_s: float
    closed: int = 0
    out_of_routing: bool = False  # the registry holds no route the drained clients had
    done: bool = False
    cancelled: bool = False


class Drain:
    """One drain of a shard; the server keeps it (and hands it to later callers) until undrained.

    `settle(timeout_s)` blocks until every unsubscribe is in the registry (True)
    or the timeout passes (False, e.g. Redis down: the writer catches up
    later by itself); `on_done` runs once the status says done, so the shard
    can publish its new state without waiting for the next heartbeat.
    """

    def __init__(self, window_s: float, conns: Callable[[], list],
                 settle: Callable[[float], bool], on_done: Callable[[], None]) -> None:
        self.status = DrainStatus(window_s)
        self._conns = conns
        self._settle = settle
        self._on_done = on_done
        self.greenlet = gevent.spawn(self._run)

    def cancel(self) -> None:
        """Stop closing clients (undrain): those not closed yet stay connected."""
        self.status.cancelled = True
        self.greenlet.kill(block=False)

    def _run(self) -> None:
        st = self.status
        targets = self._conns()
        counts, pause_s = close_steps(len(targets), st.window_s)
        log.info("draining clients=%d window_s=%s", len(targets), st.window_s)
        it = iter(targets)
        for count in counts:
            for conn in itertools.islice(it, count):
                if st.cancelled:  # undrained: `kill` may land after this greenlet was woken
                    return
                conn.close(Close.SERVICE_RESTART, "shard draining, reconnect elsewhere")
                st.closed += 1
            gevent.sleep(pause_s)
        with gevent.Timeout(LINGER_S, False):
            while self._conns() and not st.cancelled:
                gevent.sleep(STEP_S)
        if st.cancelled:
            return
        st.out_of_routing = not self._conns() and self._settle(LINGER_S)
        if st.cancelled:  # the settle may yield; an undrain meanwhile has published "live"
            return
        st.done = True
        self._on_done()
        log.info("drained closed=%d out_of_routing=%s", st.closed, st.out_of_routing)
