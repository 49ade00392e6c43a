"""Detectors: turn the monitor's raw record into alerts a person can act on.

They run inside the monitored process, on the telemetry collector's thread, so every client and
every recording sees the same alerts.  Every ~10 ms the collector drains the monitor's ring and
calls, for each detector that wants them (``wants_events``: most drains, none does),
``observe(events)`` with the drained events; once per sampling period
it calls ``evaluate(monitor, now)`` and appends the returned ``Alert`` messages to
``monitor.alerts`` and to the stream.  One module per alert kind:

========================  ===============================================================
``lost-data``             received bytes that will never be delivered (bpo-33694)
``leaked-buffer``         a buffer held after its op ended, e.g. a failed send's (bpo-32710)
``stuck-op``              a send / connect (configurable kinds) pending too long
``op-climb``              the outstanding-op count trending up (sign test, not a threshold)
``loop-lag``              loop lag median >= 10 ms or max >= 100 ms over a window
========================  ===============================================================

Every threshold lives in ``DetectorConfig``; ``AlertGate`` (in ``base``) keeps a persistent
condition from flooding.  Nothing here imports Qt, and nothing here runs on the loop thread.
"""
from __future__ import annotations

from typing import Optional

from .base import (
    ALERT_KINDS, KIND_LEAKED_BUFFER, KIND_LOOP_LAG, KIND_LOST_DATA, KIND_OP_CLIMB, KIND_STUCK_OP,
    AlertGate, Detector,
)
from .config import DetectorConfig
from .leaked_buffer import LeakedBufferDetector
from .loop_lag import LoopLagDetector
from .lost_data import LostDataDetector
from .op_climb import OpClimbDetector, sign_test_p
from .stuck_op import StuckOpDetector

__all__ = [
    "default_detectors", "DetectorConfig", "Detector", "AlertGate", "ALERT_KINDS",
    "LostDataDetector", "LeakedBufferDetector", "StuckOpDetector", "OpClimbDetector",
    "LoopLagDetector", "sign_test_p", "KIND_LOST_DATA", "KIND_LEAKED_BUFFER", "KIND_STUCK_OP",
    "KIND_OP_CLIMB", "KIND_LOOP_LAG",
]


def default_detectors(config: Optional[DetectorConfig] = None) -> list[Detector]:
    """One fresh instance of every detector (they keep state: one list per monitor)."""
    cfg = config if config is not None else DetectorConfig()
    return [LostDataDetector(cfg), LeakedBufferDetector(cfg), StuckOpDetector(cfg),
            OpClimbDetector(cfg), LoopLagDetector(cfg)]
