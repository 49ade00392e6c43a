"""stuck-op: a send, connect (or, if asked, accept) that has been in flight too long.

The mechanism
-------------
A pending overlapped op ends exactly once, with its completion.  A send stays pending while the
peer does not read (the kernel's send buffer is full); a connect stays pending while the peer
does not answer.  Neither makes progress the monitor could see: the op completes whole or not
at all (the selector-emulated backend finishes a send's whole buffer before completing it).  So
"no progress" is "still pending", and the age from ``Monitor.outstanding()`` is the measure.

The trap is ops that are *supposed* to wait forever: an idle server's accept, an idle
connection's receive.  They are not in ``stuck_kinds`` by default.  An op whose cancel was
requested but which is still in flight is included: a cancel that is never honoured is stuck too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..telemetry.messages import Alert
from .base import KIND_STUCK_OP, SEVERITY_WARNING, AlertGate, make_alert
from .config import DetectorConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..monitor.recorder import Monitor


class StuckOpDetector:
    kind = KIND_STUCK_OP

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.gate = AlertGate(config)
        self._kinds = frozenset(config.stuck_kinds)
        self._known_stuck: set[int] = set()
        self.stuck_total = 0          # distinct ops ever found stuck
        # outstanding() copies and sorts the whole in-flight table: a server with 10 000 idle
        # connections must not pay that 20 times a second on the GIL the loop needs
        self._check_interval = min(config.stuck_check_interval, config.stuck_after / 4)
        self._next_check = 0.0

    def wants_events(self, monitor: "Monitor", notable: bool) -> bool:
        return False            # no events needed: the collector builds no batch for us

    def observe(self, events: list[tuple]) -> None:
        """Nothing to collect: the outstanding table has every age."""

    def evaluate(self, monitor: "Monitor", now: float) -> list[Alert]:
        cfg = self.config
        if now < self._next_check:
            return []
        self._next_check = now + self._check_interval
        stuck = [op for op in monitor.outstanding()
                 if op.kind in self._kinds and op.age >= cfg.stuck_after]
        if not stuck:
            self._known_stuck.clear()
            return []
        ids = {op.op_id for op in stuck}
        self.stuck_total += len(ids - self._known_stuck)
        self._known_stuck = ids
        reason = self.gate.check("stuck", self.stuck_total, now, persistent=True, unit="ops")
        if reason is None:
            return []
        # outstanding() is oldest first
        oldest = stuck[0]
        kinds: dict[str, int] = {}
        for op in stuck:
            kinds[op.kind] = kinds.get(op.kind, 0) + 1
        n = cfg.evidence_ids
        evidence = {
            "ops": len(stuck),
            "op_ids": [op.op_id for op in stuck[:n]],
            "kinds": kinds,
            "fds": sorted({op.fd for op in stuck})[:n],
            "ages": [round(op.age, 3) for op in stuck[:n]],
            "requested_bytes": sum(op.requested for op in stuck),
            "cancel_requested": sum(1 for op in stuck if op.cancel_requested),
            "stuck_total": self.stuck_total,
            "threshold_seconds": cfg.stuck_after,
        }
        peer = f" to {oldest.peer}" if oldest.peer else ""
        kind_text = ", ".join(f"{c} {k}" for k, c in sorted(kinds.items()))
        return [make_alert(
            KIND_STUCK_OP, SEVERITY_WARNING, now,
            f"{len(stuck)} op(s) in flight for more than {cfg.stuck_after:g} s with no "
            f"completion ({kind_text}); oldest: {oldest.kind} op {oldest.op_id} on fd "
            f"{oldest.fd}{peer}, {oldest.age:.1f} s, {oldest.requested} bytes requested",
            evidence, reason)]
