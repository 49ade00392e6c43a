"""Plain-data views of a Monitor, safe to hand to other threads and to serialise.

These are what ``Monitor.snapshot()``, ``Monitor.outstanding()`` and ``Monitor.live_buffers()``
return; the telemetry layer turns them into wire frames field by field, so a field added here
is a field added to ``docs/PROTOCOL.md``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Snapshot:
    """The monitor's counters at one instant.  Byte counts are cumulative since the loop started."""

    time: float                      # time.monotonic() of the monitored process
    wall: float                      # time.time()
    backend: str
    closed: bool
    ops_outstanding: int
    ops_outstanding_by_kind: dict = field(default_factory=dict)   # kind name -> count
    ops_submitted: int = 0
    ops_completed: int = 0
    ops_cancelled: int = 0
    ops_failed: int = 0
    ops_inline: int = 0              # completed or failed inside the submission call
    cancel_requests: int = 0
    late_completions: int = 0        # completed by the OS after a cancel was requested
    bytes_received: int = 0          # from the OS
    bytes_delivered: int = 0         # to a protocol or a sock_* caller
    bytes_discarded: int = 0         # received, and dropped: never deliverable
    bytes_abandoned: int = 0         # held by a paused transport when its connection was lost
    bytes_sent: int = 0
    buffers_live: int = 0
    buffer_bytes_live: int = 0
    loop_lag: float = 0.0            # seconds, latest sample
    loop_lag_max: float = 0.0        # seconds, since the loop started
    events_dropped: int = 0          # events lost to ring overflow before a consumer drained them
    instrumentation_errors: int = 0
    last_instrumentation_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OpInfo:
    """One in-flight op."""

    op_id: int
    kind: str
    fd: int
    requested: int
    buffer_size: int
    age: float                       # seconds since submission
    cancel_requested: bool
    peer: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BufferInfo:
    """One buffer the backend holds for an op."""

    buf_id: int
    op_id: int
    kind: str
    size: int
    age: float                       # seconds since it was pinned
    held_after_op_end: float         # seconds it has outlived its op (0.0 while the op runs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
