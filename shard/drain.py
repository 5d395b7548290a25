"""Draining a shard: close its clients spread over a window, then leave the registry.

`common.drain.close_steps` is the pure schedule; `Drain` runs it in a
greenlet against the server's connections. Close code 1012
(`SERVICE_RESTART`) tells clients to come back after a jittered pause.
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
    deregistered: bool = False
    done: bool = False


class Drain:
    """One drain of a shard; the server keeps the first and hands it to every later caller."""

    def __init__(self, window_s: float, conns: Callable[[], list],
                 leave_registry: Callable[[], None]) -> None:
        self.status = DrainStatus(window_s)
        self._conns = conns
        self._leave = leave_registry
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        st = self.status
        targets = self._conns()
        counts, pause_s = close_steps(len(targets), st.window_s)
        log.info("draining clients=%d window_s=%s", len(targets), st.window_s)
        it = iter(targets)
        for count in counts:
            for conn in itertools.islice(it, count):
                conn.close(Close.SERVICE_RESTART, "shard draining, reconnect elsewhere")
                st.closed += 1
            gevent.sleep(pause_s)
        with gevent.Timeout(LINGER_S, False):
            while self._conns():
                gevent.sleep(STEP_S)
        self._leave()
        st.deregistered = True
        st.done = True
        log.info("drained closed=%d", st.closed)
