"""loop-lag: the event loop is late running its callbacks (Clinic.js Doctor's thresholds).

The loop's own periodic timer measures how late it fires (``Monitor.record_lag``); a loop
blocked by CPU-bound code or a blocking call shows lag.  Over the last ``lag_window`` seconds of
samples: median >= ``lag_median`` (10 ms: the loop is *steadily* slow) or max >= ``lag_max``
(100 ms: at least one long stall) raises the alert.  Fewer than ``lag_min_samples`` samples give
no verdict.  The trap: a loop blocked so hard that its timer cannot fire produces no sample
*during* the stall; the stall shows when the timer finally runs, as one sample as long as the
stall.  (Guessing a stall from missing samples would also fire on a loop that was merely
stopped between ``run_until_complete`` calls, so this detector does not guess.)
"""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from ..telemetry.messages import Alert
from .base import KIND_LOOP_LAG, SEVERITY_CRITICAL, SEVERITY_WARNING, AlertGate, make_alert
from .config import DetectorConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..monitor.recorder import Monitor


class LoopLagDetector:
    kind = KIND_LOOP_LAG

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.gate = AlertGate(config)
        self._next_check = 0.0

    def wants_events(self, monitor: "Monitor", notable: bool) -> bool:
        return False            # no events needed: the collector builds no batch for us

    def observe(self, events: list[tuple]) -> None:
        """Nothing to collect: lag samples are kept by the monitor."""

    def evaluate(self, monitor: "Monitor", now: float) -> list[Alert]:
        cfg = self.config
        if now < self._next_check:
            return []
        # the monitor keeps ~3 minutes of lag samples: copying and filtering them 20 times a
        # second would cost the loop's GIL time for nothing a 5 s window needs
        self._next_check = now + cfg.lag_check_interval
        samples = monitor.lag_samples(since=now - cfg.lag_window)
        if len(samples) < cfg.lag_min_samples:
            return []
        lags = [lag for _, lag in samples]
        median = statistics.median(lags)
        worst = max(lags)
        if median < cfg.lag_median and worst < cfg.lag_max:
            return []
        reason = self.gate.check("lag", worst, now, persistent=True, unit="s max lag")
        if reason is None:
            return []
        which = []
        if median >= cfg.lag_median:
            which.append(f"median {median * 1e3:.1f} ms >= {cfg.lag_median * 1e3:g} ms")
        if worst >= cfg.lag_max:
            which.append(f"max {worst * 1e3:.0f} ms >= {cfg.lag_max * 1e3:g} ms")
        severity = SEVERITY_CRITICAL if median >= cfg.lag_max else SEVERITY_WARNING
        evidence = {
            "window_seconds": cfg.lag_window,
            "samples": len(lags),
            "median_lag": round(median, 6),
            "max_lag": round(worst, 6),
            "worst_at": round(samples[lags.index(worst)][0], 6),
        }
        return [make_alert(
            KIND_LOOP_LAG, severity, now,
            f"event loop lagging over the last {cfg.lag_window:g} s: " + " and ".join(which)
            + f" ({len(lags)} samples)", evidence, reason)]
