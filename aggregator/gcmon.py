"""Garbage-collector tuning and pause measurement.

With thousands of connections, CPython's full collections pause the event loop
for 0.3–0.9 s (measured). After start-up the aggregator raises the collection
thresholds and `gc.freeze()`s the long-lived start-up objects; `GcMonitor`
measures every pause through `gc.callbacks` for the `gc_pause_seconds` histogram.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PAUSE_BUCKETS", "GcMonitor", "tune_gc"]

log = logging.getLogger(__name__)

#: Histogram bucket upper bounds (seconds) for `gc_pause_seconds`.
PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def tune_gc(threshold: tuple[int, int, int] | None, *, freeze: bool) -> None:
    """Raise the thresholds and optionally freeze everything allocated so far."""
    if threshold is not None:
        gc.set_threshold(*threshold)
    if freeze:
        gc.collect()
        gc.freeze()
    log.info(
        "gc_tuned threshold=%s frozen=%d",
        ",".join(map(str, gc.get_threshold())),
        gc.get_freeze_count(),
    )


class GcMonitor:
    """Accumulates GC pause durations into a cumulative histogram.

    `observe` is an optional extra sink (e.g. a prometheus Histogram's `observe`).
    Use as a context manager, or `install()` / `uninstall()`.
    """

    def __init__(
        self,
        buckets: tuple[float, ...] = PAUSE_BUCKETS,
        *,
        observe: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.buckets = buckets
        self.bucket_counts = [0] * len(buckets)  # non-cumulative, per bucket
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.by_generation = [0, 0, 0]
        self._observe = observe
        self._clock = clock
        self._started: float | None = None
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        if self._started is None:
            return
        pause = self._clock() - self._started
        self._started = None
        self.record(pause, int(info.get("generation", 0)))

    def record(self, pause: float, generation: int = 0) -> None:
        self.count += 1
        self.sum += pause
        self.max = max(self.max, pause)
        if 0 <= generation < 3:
            self.by_generation[generation] += 1
        for i, bound in enumerate(self.buckets):
            if pause <= bound:
                self.bucket_counts[i] += 1
                break
        if self._observe is not None:
            self._observe(pause)

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """Prometheus-style (le, cumulative count) pairs, ending with +Inf."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip(self.buckets, self.bucket_counts, strict=True):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def __enter__(self) -> GcMonitor:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
