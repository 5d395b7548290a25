"""Event-loop health of a shard: loop lag, GC pauses, and the gc.freeze policy (gevent adapter).

Loop lag is how late a short sleep wakes up: every tick, ping and write waits
at least that long. On a busy machine part of it is the OS not running the
process at all, so each probe also measures the CPU time the loop's thread
used meanwhile: `stall` = min(lag, CPU used) is the part spent running code
that did not yield (a long fan-out, a full GC pass), the event loop's own fault.
GC pauses are timed with `gc.callbacks`, in thread CPU time for the same reason.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import gevent

from common.metrics import FastHistogram
from shard.gcpolicy import GcAction, GcPolicy

log = logging.getLogger(__name__)
LAG_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
PROBE_S = 0.01


class LoopWatch:
    def __init__(self, conns: Callable[[], int], freeze_check_s: float) -> None:
        self.lag = FastHistogram(LAG_BUCKETS_S)
        self.stall = FastHistogram(LAG_BUCKETS_S)
        self.gc_pause = FastHistogram(LAG_BUCKETS_S)
        self.max_lag_s = 0.0
        self.max_stall_s = 0.0
        self.max_gc_pause_s = 0.0
        self.full_collections = 0
        self.freezes = 0
        self.policy = GcPolicy()
        self.conns = conns
        self.freeze_check_s = freeze_check_s
        self._gc_started = 0.0
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._greenlets = [gevent.spawn(self._probe)]
        if self.freeze_check_s > 0:
            self._greenlets.append(gevent.spawn(self._freezer))

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gevent.killall(self._greenlets, block=False)

    def _probe(self) -> None:
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            gevent.sleep(PROBE_S)
            lag = time.perf_counter() - t0 - PROBE_S
            stall = min(lag, time.thread_time() - c0)
            self.lag.observe(lag)
            self.stall.observe(stall)
            if lag > self.max_lag_s:
                self.max_lag_s = lag
            if stall > self.max_stall_s:
                self.max_stall_s = stall

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
            return
        pause = time.thread_time() - self._gc_started
        self.gc_pause.observe(pause)
        self.max_gc_pause_s = max(self.max_gc_pause_s, pause)
        if info.get("generation") == 2:
            self.full_collections += 1

    def _freezer(self) -> None:
        while True:
            gevent.sleep(self.freeze_check_s)
            action = self.policy.decide(self.conns())
            if action is GcAction.FREEZE:
                gc.freeze()
            elif action is GcAction.REFREEZE:
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            if action is not GcAction.NONE:
                self.freezes += 1
                log.info("gc %s connections=%d frozen_objects=%d", action.value, self.conns(),
                         gc.get_freeze_count())

    def stats(self) -> dict[str, object]:
        return {
            "loop_lag_max_s": round(self.max_lag_s, 6),
            "loop_lag_counts": list(self.lag.counts),
            "loop_stall_max_s": round(self.max_stall_s, 6),
            "loop_stall_counts": list(self.stall.counts),
            "gc_pause_max_s": round(self.max_gc_pause_s, 6),
            "gc_pause_counts": list(self.gc_pause.counts),
            "lag_bounds_s": list(LAG_BUCKETS_S),
            "gc_full_collections": self.full_collections,
            "gc_freezes": self.freezes,
            "gc_frozen_objects": gc.get_freeze_count(),
        }
