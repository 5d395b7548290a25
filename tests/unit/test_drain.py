"""The shard's drain schedule run as a greenlet: an undrain stops it wherever it is."""

from __future__ import annotations

import gevent

from shard.codes import Close
from shard.drain import Drain


class _Conn:
    def __init__(self, conns: list[_Conn]) -> None:
        self.conns = conns
        self.closed_with: int | None = None

    def close(self, code: int, reason: str) -> None:
        self.closed_with = code
        self.conns.remove(self)


def _drain(n: int, window_s: float) -> tuple[Drain, list[_Conn], list[str]]:
    conns: list[_Conn] = []
    conns.extend(_Conn(conns) for _ in range(n))
    events: list[str] = []
    drain = Drain(window_s, lambda: list(conns), lambda _t: events.append("settle") or True,
                  lambda: events.append("done"))
    return drain, conns, events


def test_a_full_drain_closes_everyone_with_1012_then_settles_and_reports_done():
    """Without an undrain every client gets 1012, the registry is settled, then on_done runs once."""
    drain, conns, events = _drain(4, 0.1)
    targets = list(conns)
    drain.greenlet.join(5)
    assert [c.closed_with for c in targets] == [Close.SERVICE_RESTART] * 4
    assert (drain.status.closed, drain.status.done, drain.status.out_of_routing) == (4, True, True)
    assert events == ["settle", "done"]


def test_a_drain_cancelled_before_its_greenlet_runs_closes_nobody_and_never_reports_done():
    """An undrain whose kill lands after the greenlet was woken: the cancelled flag alone stops it."""
    drain, conns, events = _drain(4, 0.1)
    drain.status.cancelled = True  # as Drain.cancel sets it, without the kill
    drain.greenlet.join(5)
    assert len(conns) == 4 and drain.status.closed == 0
    assert (drain.status.done, events) == (False, [])


def test_a_drain_cancelled_midway_stops_closing_and_never_reports_done():
    """Cancelled after the first step: the clients not closed yet stay, on_done never runs."""
    drain, conns, events = _drain(40, 2.0)
    while drain.status.closed == 0:  # the schedule closes one client per 50 ms step over 2 s
        gevent.sleep(0.01)
    closed = drain.status.closed
    drain.status.cancelled = True
    drain.greenlet.join(5)
    assert drain.status.closed == closed < 40 and len(conns) == 40 - closed
    assert (drain.status.done, events) == (False, [])
