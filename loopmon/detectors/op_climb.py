"""op-climb: the number of outstanding ops trending upward — a sign test, not a threshold.

The mechanism
-------------
A program that forgets ops (a reader never cancelled, a connect never awaited) shows it as a
count of in-flight ops that keeps rising.  A busy one shows bursts: 200 connections arrive, the
count jumps and later falls back.  Clinic.js Doctor tells the two apart for handles with a sign
test, and so does this detector:

1. Each tick samples the number of outstanding ops (from the monitor's counters: building the
   outstanding table every tick would cost the loop's GIL time in proportion to its size).
   Samples are averaged into buckets of ``climb_bucket`` seconds, so one burst moves one or
   two buckets, not forty samples.
2. Over the last ``climb_window`` seconds, take the differences between consecutive bucket
   means and drop the zeros (a flat count carries no sign).  Under "no trend" each remaining
   difference is up or down with probability 1/2, so the number of ups among ``n`` is
   Binomial(n, 1/2); the one-sided p-value is P(X >= ups).
3. Fire when p <= ``climb_alpha`` *and* there were at least ``climb_min_changes`` changes *and*
   the count rose by at least ``climb_min_rise`` ops across the window.  The last condition
   stops a tiny, statistically clean drift of 1 op from alerting; the small alpha pays for
   re-running the test every bucket over overlapping windows.

A step (a burst that stays up) is one up and many zeros: n is small, no alert.  A sawtooth of
bursts gives as many downs as ups: no alert.
"""
from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Optional, Sequence

from ..telemetry.messages import Alert
from .base import KIND_OP_CLIMB, SEVERITY_WARNING, AlertGate, make_alert, outstanding_count
from .config import DetectorConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..monitor.recorder import Monitor


def sign_test_p(ups: int, n: int) -> float:
    """One-sided sign test: P(X >= ups) for X ~ Binomial(n, 1/2).  1.0 when ``n == 0``."""
    if n <= 0 or ups <= 0:
        return 1.0
    if ups > n:
        return 0.0
    return math.fsum(math.comb(n, i) for i in range(ups, n + 1)) / 2.0 ** n


def climb_verdict(bucket_means: Sequence[float]) -> tuple[int, int, float, float]:
    """``(ups, changes, p, rise)`` of a series of bucket means."""
    ups = changes = 0
    for a, b in zip(bucket_means, bucket_means[1:]):
        if b > a:
            ups += 1
            changes += 1
        elif b < a:
            changes += 1
    rise = (bucket_means[-1] - bucket_means[0]) if bucket_means else 0.0
    return ups, changes, sign_test_p(ups, changes), rise


class OpClimbDetector:
    kind = KIND_OP_CLIMB

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.gate = AlertGate(config)
        self._nbuckets = max(2, int(round(config.climb_window / config.climb_bucket)))
        self._buckets: deque = deque()   # (bucket index, mean), within the window
        self._cur_index: Optional[int] = None
        self._cur_sum = 0.0
        self._cur_n = 0

    def wants_events(self, monitor: "Monitor", notable: bool) -> bool:
        return False            # no events needed: the collector builds no batch for us

    def observe(self, events: list[tuple]) -> None:
        """Nothing to collect: the count is sampled off the monitor in ``evaluate``."""

    def add_sample(self, now: float, count: float) -> bool:
        """Feed one sample.  True when it closed a bucket (the test is due)."""
        index = int(now // self.config.climb_bucket)
        closed = False
        if self._cur_index is not None and index != self._cur_index:
            if self._cur_n:
                self._buckets.append((self._cur_index, self._cur_sum / self._cur_n))
            # drop buckets that left the window.  A bucket with no samples (a collector
            # starved of the GIL for a moment) is simply absent: the sign test compares the
            # buckets that exist, in order, which is still a fair test of a trend
            oldest = index - self._nbuckets
            while self._buckets and self._buckets[0][0] < oldest:
                self._buckets.popleft()
            self._cur_sum = 0.0
            self._cur_n = 0
            closed = True
        self._cur_index = index
        self._cur_sum += count
        self._cur_n += 1
        return closed

    def evaluate(self, monitor: "Monitor", now: float) -> list[Alert]:
        if not self.add_sample(now, outstanding_count(monitor)):
            return []
        if len(self._buckets) < max(3, (3 * self._nbuckets) // 4):
            return []   # not enough of the window seen yet
        cfg = self.config
        means = [m for _, m in self._buckets]
        ups, changes, p, rise = climb_verdict(means)
        if changes < cfg.climb_min_changes or p > cfg.climb_alpha or rise < cfg.climb_min_rise:
            return []
        reason = self.gate.check("climb", rise, now, persistent=True, unit="ops")
        if reason is None:
            return []
        evidence = {
            "window_seconds": cfg.climb_window,
            "bucket_seconds": cfg.climb_bucket,
            "ups": ups,
            "changes": changes,
            "p_value": p,
            "rise": round(rise, 2),
            "from": round(means[0], 2),
            "to": round(means[-1], 2),
            "bucket_means": [round(m, 2) for m in means],
        }
        return [make_alert(
            KIND_OP_CLIMB, SEVERITY_WARNING, now,
            f"outstanding ops climbing: {means[0]:.0f} -> {means[-1]:.0f} over "
            f"{cfg.climb_window:g} s, {ups} of {changes} changes upward "
            f"(sign test p = {p:.1e})", evidence, reason)]
