"""What every detector shares: the plug-in interface, alert construction and the anti-flood gate.

The interface
-------------
The telemetry collector owns the single consumer of ``Monitor.drain()``.  Every drain (~10 ms)
it hands the events to each detector's ``observe(events)`` (raw tuples, laid out as in
``loopmon.monitor.events``; in fact an ``EventBatch``, a list with per-code views), and once per
sampling period it calls ``evaluate(monitor, now)``, where ``now`` is the monitored process's
``time.monotonic()``.  Both run on the collector's thread, never on the loop's: a detector may
take a millisecond, it may not block.  A detector that needs state (op ids seen, a window of
samples) keeps it bounded: the program may run for weeks.

Cost: that thread shares the GIL with the monitored loop, and a busy echo server records
~300 k events/s: every 100 ns spent per event is 3 % of the program.  So a detector says,
after each drain, whether it needs the events at all: ``wants_events(monitor, notable)``
(optional; without it a detector observes every drain).  ``notable`` is the collector's
reading of the monitor's counters (``EventBatch.notable``): False proves the drain holds no
cancel, discard, failure, cancelled or late end.  The bundled detectors need events only
then (lost-data also while the received-but-undelivered gap is large), so a healthy busy
program costs them nothing per event; when no detector and no client wants a drain, the
collector does not even wrap it in a batch.  When ``observe`` does run it does no Python
work per event: it takes the batch's per-code groups (``EventBatch.group``) and filters
columns with ``map`` / ``compress`` / ``dict.update`` (C loops); per-op state is avoided
where a counter or the monitor's tables (read in ``evaluate``, at most a few times a
second) can answer.

Events can be lost (ring overflow, counted in ``events_dropped``), so a detector that can read a
cumulative counter or a table off the monitor trusts that first and uses events for the
evidence (which op ids, which errors).

Not flooding
------------
A condition that holds for an hour must not produce 72 000 alerts.  ``AlertGate`` lets one alert
through, then the same alert again only when its evidence has grown by ``growth_factor`` (so a
steady leak alerts at 1, 2, 4, 8 ... leaked buffers) or, as a reminder, after ``cooldown`` —
and never twice within ``min_refire_interval``.  The returned reason goes into the message, so
a reader can tell a repeat from a new problem.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional, Protocol

from ..telemetry.messages import Alert
from .config import DetectorConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..monitor.recorder import Monitor

KIND_LOST_DATA = "lost-data"
KIND_LEAKED_BUFFER = "leaked-buffer"
KIND_STUCK_OP = "stuck-op"
KIND_OP_CLIMB = "op-climb"
KIND_LOOP_LAG = "loop-lag"
ALERT_KINDS = (KIND_LOST_DATA, KIND_LEAKED_BUFFER, KIND_STUCK_OP, KIND_OP_CLIMB, KIND_LOOP_LAG)

SEVERITY_WARNING = "warning"
SEVERITY_CRITICAL = "critical"


class Detector(Protocol):
    """What the collector calls.  ``kind`` is the alert kind the detector raises."""

    kind: str

    # optional: def wants_events(self, monitor: "Monitor", notable: bool) -> bool

    def observe(self, events: list[tuple]) -> None: ...

    def evaluate(self, monitor: "Monitor", now: float) -> list[Alert]: ...


def outstanding_count(monitor: "Monitor") -> int:
    """Ops in flight now, from the monitor's plain-int counters: O(1), no table copy.

    Every op is counted once when submitted and once when it ends (completed, cancelled or
    failed, inline or not), so the difference is what is in flight.  The ends are read first:
    an op the loop thread records between the reads can only make the figure one too high.
    """
    try:
        ended = monitor.ops_completed + monitor.ops_cancelled + monitor.ops_failed
        return max(0, monitor.ops_submitted - ended)
    except AttributeError:          # a monitor-like object without the counters
        return len(monitor.outstanding())


def wall_for(now: float) -> float:
    """The wall-clock time matching monitor time ``now`` (a monotonic reading)."""
    return time.time() - (time.monotonic() - now)


def make_alert(kind: str, severity: str, now: float, message: str, evidence: dict,
               reason: str = "") -> Alert:
    """An ``Alert`` at monitor time ``now``; ``reason`` (why it fired again) joins the message."""
    if reason:
        message = f"{message} ({reason})"
    return Alert(kind=kind, severity=severity, t=now, wall=wall_for(now),
                 message=" ".join(message.split()), evidence=evidence)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GiB"  # pragma: no cover


class AlertGate:
    """Decides whether an alert may fire again.  See the module docstring.

    ``magnitude`` is the size of the evidence (leaked buffers, lost bytes, lag): a number that
    grows as the problem does.  ``persistent`` says the condition is still true *now* (a held
    buffer, a stuck op): such an alert is repeated after the cool-down as a reminder.  A
    non-persistent one (lost bytes: they are gone, the damage is done) repeats only when
    there is new evidence.
    """

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self._last: dict[object, tuple[float, float]] = {}   # key -> (time fired, magnitude)

    def check(self, key: object, magnitude: float, now: float, *,
              persistent: bool, unit: str = "") -> Optional[str]:
        """``None``: stay quiet.  Otherwise fire; the string is the reason ("" the first time)."""
        last = self._last.get(key)
        reason: Optional[str] = None
        if last is None:
            reason = ""
        else:
            t0, m0 = last
            elapsed = now - t0
            if elapsed < self.config.min_refire_interval:
                return None
            if magnitude > m0 and magnitude >= m0 * self.config.growth_factor:
                reason = (f"fired again: evidence grew from {_fmt(m0, unit)} to "
                          f"{_fmt(magnitude, unit)} in {elapsed:.1f} s")
            elif elapsed >= self.config.cooldown and (persistent or magnitude > m0):
                reason = (f"repeated after the {self.config.cooldown:.0f} s cool-down"
                          + ("; still present" if persistent else
                             f"; evidence now {_fmt(magnitude, unit)}"))
        if reason is not None:
            self._last[key] = (now, magnitude)
        return reason

    def forget(self, key: object) -> None:
        self._last.pop(key, None)


def _fmt(x: float, unit: str = "") -> str:
    if unit == "bytes":
        return human_bytes(x)
    text = str(int(x)) if float(x).is_integer() else f"{x:.3g}"
    return f"{text} {unit}" if unit else text
