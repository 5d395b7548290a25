"""Prometheus exposition helpers shared by every process.

Metrics are read from the processes' own plain counters at scrape time (a
custom collector), so the hot paths pay nothing for them; the one exception is
`FastHistogram`, a lock-free bucket counter cheap enough to observe per write.

Every registry also carries prometheus_client's standard collectors
(`process_*` from /proc, `python_info`, `python_gc_*`), which are read at
scrape time too. They are plain synchronous reads of /proc and `gc.get_stats()`,
so under gevent they simply run inside the scraping greenlet; the only cost
that grows is `process_open_fds` (one directory entry per open socket).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: sub-millisecond to 10 s, dense where real-time delivery lives.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                     0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FastHistogram:
    """Bucket counts for one process's thread/greenlet (no lock: single writer)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot: +Inf
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.sum += value * count

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (inf when beyond the last bound)."""
        return bucket_quantile(self.bounds, self.counts, q) or 0.0

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


def bucket_quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of `counts` (one more than `bounds`: +Inf);
    None when empty. Works on differences of two snapshots as well as on a live histogram."""
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        seen += n
        if seen >= rank:
            return bound
    return float("inf")


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter family; `name` without the `_total` suffix prometheus_client adds."""
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(kind: type[Metric], name: str, doc: str, label: str,
             values: Mapping[str, float]) -> Metric:
    """A counter or gauge family with one label (e.g. per shard, per partition)."""
    fam = kind(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        fam.add_metric([key], value)
    return fam


class FnCollector:
    """Adapts a function yielding metric families to prometheus_client's collector API."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterator[Metric]:
        yield from self.fn()


def make_registry(fn: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of this process's own metrics plus the standard process and Python
    collectors (its own registry, not prometheus_client's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FnCollector(fn))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, _resident_memory_bytes, _open_fds…
    PlatformCollector(registry=registry)  # python_info
    GCCollector(registry=registry)  # python_gc_objects_collected_total, _collections_total…
    return registry


STANDARD_NAMES = ("process_cpu_seconds", "process_virtual_memory_bytes", "process_resident_memory_bytes",
                  "process_start_time_seconds", "process_open_fds", "process_max_fds", "python_info",
                  "python_gc_objects_collected", "python_gc_objects_uncollectable",
                  "python_gc_collections")


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
