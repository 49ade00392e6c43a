"""The collector's detectors: loaded lazily, asked which drains they need, evaluated per tick.

The detectors (``loopmon.detectors``, another part of the project) plug in through a small
interface: ``observe(events)`` with a drain's events, ``evaluate(monitor, now)`` once per
tick returning ``Alert`` messages, and optionally ``wants_events(monitor, notable)`` so that
a drain nobody needs is never built into a batch (see ``drain``).  The package is imported
only when first needed, and may be absent (no detectors) or broken: whatever a detector
raises is counted (``errors``, the last one kept in ``last_error``, the first three logged)
and never stops the collector's sampling -- the monitored program comes first.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from .messages import Alert

log = logging.getLogger("loopmon.telemetry")


class DetectorHost:
    """The detectors one collector feeds (see the module docstring)."""

    def __init__(self, monitor: Any, detectors: Optional[list] = None) -> None:
        self.monitor = monitor
        self._detectors = detectors          # None: load loopmon.detectors lazily
        self._loaded = detectors is not None
        self.errors = 0
        self.last_error = ""

    def observers(self, notable: bool) -> list:
        """The detectors whose ``observe`` needs this drain's events.

        A detector may say, from the monitor's counters, that it does not
        (``wants_events(monitor, notable)``; ``notable``: the drain may hold a cancel, a
        discard, a failure ...): then no batch is built for it.  One without the method
        observes every drain."""
        self._load()
        out = []
        for det in self._detectors or ():
            wants = getattr(det, "wants_events", None)
            try:
                if wants is None or wants(self.monitor, notable):
                    out.append(det)
            except Exception as exc:
                self.note_error(exc)
                out.append(det)
        return out

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            try:
                from .. import detectors as detectors_pkg   # lazily: optional, may be absent
                self._detectors = list(detectors_pkg.default_detectors())
            except ImportError:
                self._detectors = []
            except Exception as exc:
                self.note_error(exc)
                self._detectors = []

    def evaluate(self, now: float) -> list[Alert]:
        """Every detector's alerts for this tick (also appended to ``monitor.alerts``)."""
        self._load()
        alerts: list[Alert] = []
        for det in self._detectors or ():
            try:
                for alert in det.evaluate(self.monitor, now) or ():
                    if isinstance(alert, Alert):
                        alerts.append(alert)
                    else:
                        raise TypeError(f"detector returned {type(alert).__name__}, not Alert")
            except Exception as exc:
                self.note_error(exc)
        for alert in alerts:
            self.monitor.alerts.append(alert)
        return alerts

    def note_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        if self.errors <= 3:
            log.warning("loopmon detector error: %s", self.last_error)
