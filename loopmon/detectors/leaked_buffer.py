"""leaked-buffer: a buffer the backend still holds well after its op ended (bpo-32710).

The mechanism
-------------
An overlapped op owns a buffer from submission until its completion: the kernel may write into
it (a receive) or read from it (a send) the whole time, so the backend pins it.  When the op
ends — completed, cancelled, or failed right at submission — the buffer must be let go.  Pre-fix
CPython forgot that last case: when ``WSASend()``/``ReadFile()`` failed immediately, the
overlapped object kept its buffer, one reference per failure, and held-buffer bytes climbed in
step with the failures.

The monitor records the op end time on a buffer that outlives its op, so
``Monitor.live_buffers()`` gives each held buffer's ``held_after_op_end``.  Every buffer held
``leak_after`` seconds past its op's end is leaked.  The grace period exists because a real
overlapped backend may legitimately keep a buffer a moment longer (until the kernel's own
completion of a cancelled op is reaped).

Evidence comes from two places: the table (always right, even if events were dropped) gives
the count, bytes, buffer and op ids; the events give each leaking op's outcome and error type
("12 of them from failed sends: BrokenPipeError").

Cost: ``observe`` runs on the collector thread, which shares the GIL with the monitored loop.
It keeps only the ends of ops that did *not* complete (failed, cancelled), so it asks for a
drain's events only when the monitor's counters say it may hold one (``wants_events``;
almost never on a healthy program), and then picks them from the ``EV_OP_END`` group with a
C-level filter (``EventBatch``): no Python work per event.  A leaked buffer whose op is not among them
completed (unless events were dropped, when its outcome is left out of the evidence).
"""
from __future__ import annotations

from itertools import compress, islice, repeat
from operator import itemgetter, ne
from typing import TYPE_CHECKING

from ..monitor.events import EV_OP_END, OUTCOME_COMPLETED, OUTCOME_FAILED, outcome_name
from ..telemetry.event_batch import EventBatch
from ..telemetry.messages import Alert
from .base import (
    KIND_LEAKED_BUFFER, SEVERITY_CRITICAL, SEVERITY_WARNING, AlertGate, human_bytes, make_alert,
)
from .config import DetectorConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..monitor.recorder import Monitor

_MAX_TRACKED = 20_000   # op ends remembered for evidence (the table is the truth)
_op_of = itemgetter(3)
_outcome_of = itemgetter(4)
_outcome_error_of = itemgetter(4, 6)


class LeakedBufferDetector:
    kind = KIND_LEAKED_BUFFER

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.gate = AlertGate(config)
        # op id -> (outcome, error) of ops that ended other than "completed" (insertion order:
        # oldest first; trimmed to _MAX_TRACKED).  Completed ops are the bulk of the traffic
        # and are not remembered: a leaked buffer whose op is not here completed.
        self._op_ends: dict[int, tuple[int, str]] = {}
        self._known_leaked: set[int] = set()                  # buf ids already counted
        self.leaked_total = 0                                 # distinct buffers ever leaked
        self._next_check = 0.0

    def wants_events(self, monitor: "Monitor", notable: bool) -> bool:
        """Only a drain that may hold a failed or cancelled end (the counters moved)."""
        return notable

    def observe(self, events: list[tuple]) -> None:
        """Remember how the ops that did not complete ended (C-level filter, no Python per event).

        The buffer table on the monitor is the truth about what is held; the events only say
        how a leaking op ended (failed with which error, cancelled).
        """
        ends = EventBatch.of(events).group(EV_OP_END)
        if not ends:
            return
        bad = list(compress(ends, map(ne, map(_outcome_of, ends), repeat(OUTCOME_COMPLETED))))
        if not bad:
            return
        op_ends = self._op_ends
        op_ends.update(zip(map(_op_of, bad), map(_outcome_error_of, bad)))
        if len(op_ends) > 2 * _MAX_TRACKED:
            self._op_ends = dict(islice(op_ends.items(), len(op_ends) - _MAX_TRACKED, None))

    def evaluate(self, monitor: "Monitor", now: float) -> list[Alert]:
        cfg = self.config
        if now < self._next_check:
            return []
        self._next_check = now + cfg.leak_check_interval
        leaked = [b for b in monitor.live_buffers() if b.held_after_op_end >= cfg.leak_after]
        if not leaked:
            self._known_leaked.clear()
            return []
        ids = {b.buf_id for b in leaked}
        self.leaked_total += len(ids - self._known_leaked)
        self._known_leaked = ids
        reason = self.gate.check("leak", self.leaked_total, now, persistent=True, unit="buffers")
        if reason is None:
            return []
        leaked.sort(key=lambda b: b.held_after_op_end, reverse=True)
        nbytes = sum(b.size for b in leaked)
        kinds: dict[str, int] = {}
        for b in leaked:
            kinds[b.kind] = kinds.get(b.kind, 0) + 1
        failed = 0
        errors: dict[str, int] = {}
        outcomes: dict[str, int] = {}
        # ops not remembered completed -- unless their end event was lost (ring overflow)
        assume_completed = (OUTCOME_COMPLETED, "") if not monitor.events_dropped else None
        for b in leaked:
            end = self._op_ends.get(b.op_id, assume_completed)
            if end is None:
                continue
            outcomes[outcome_name(end[0])] = outcomes.get(outcome_name(end[0]), 0) + 1
            if end[0] == OUTCOME_FAILED:
                failed += 1
                if end[1]:
                    errors[end[1]] = errors.get(end[1], 0) + 1
        n = cfg.evidence_ids
        evidence = {
            "buffers": len(leaked),
            "bytes": nbytes,
            "buf_ids": [b.buf_id for b in leaked[:n]],
            "op_ids": [b.op_id for b in leaked[:n]],
            "kinds": kinds,
            "op_outcomes": outcomes,
            "failed_ops": failed,
            "errors": errors,
            "oldest_held_after_op_end": round(leaked[0].held_after_op_end, 3),
            "leaked_total": self.leaked_total,
            "threshold_seconds": cfg.leak_after,
        }
        kind_text = ", ".join(f"{c} {k}" for k, c in sorted(kinds.items()))
        why = ""
        if failed:
            err = ", ".join(sorted(errors)) or "no error type"
            why = f"; {failed} of them from ops that failed ({err})"
        severity = SEVERITY_CRITICAL if nbytes >= cfg.leak_critical_bytes else SEVERITY_WARNING
        return [make_alert(
            KIND_LEAKED_BUFFER, severity, now,
            f"{len(leaked)} buffer(s), {human_bytes(nbytes)}, still held more than "
            f"{cfg.leak_after:g} s after their op ended ({kind_text}; oldest "
            f"{leaked[0].held_after_op_end:.1f} s, op {leaked[0].op_id}){why}", evidence, reason)]
