"""Every threshold the detectors use, in one place.

A detector that fires on a healthy program is worse than none: people learn to ignore it.
So each default below says why it is what it is.  ``DetectorConfig`` is frozen; build a new
one with ``dataclasses.replace(DetectorConfig(), leak_after=2.0)`` to change a threshold.
All times are seconds, all sizes bytes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorConfig:
    # --- not flooding: how the same kind of alert may fire again --------------------------
    #: the same alert fires again with no *new* evidence only after this long (a reminder)
    cooldown: float = 30.0
    #: ...or earlier, when its evidence has grown by this factor (1 -> 2 -> 4 ... buffers):
    #: a steady leak produces a logarithmic number of alerts, not one per tick
    growth_factor: float = 2.0
    #: and never twice within this interval, whatever happens
    min_refire_interval: float = 2.0
    #: op ids / buffer ids listed in an alert's evidence (the counts are always complete)
    evidence_ids: int = 20

    # --- lost-data ------------------------------------------------------------------------
    #: a paused transport legitimately holds up to one read buffer of received-but-undelivered
    #: bytes (CPython's proactor transport reads up to 256 KiB at a time and keeps the data
    #: while paused); the unexplained gap is allowed this much per fd that was read recently
    lost_gap_hold_per_reader: int = 256 * 1024
    #: plus this much slack (data between its completion and its delivery callback)
    lost_gap_slack: int = 64 * 1024
    #: the gap must stay above that bound for this long before it counts (it is a backstop
    #: for losses the backend does not flag; flagged discards alert at once)
    lost_gap_seconds: float = 10.0
    #: "read recently": fds seen in a receive op within this window count as readers
    lost_reader_window: float = 60.0
    #: reading fds are only noted from drains after which the gap exceeds this: a healthy
    #: program's gap is a few chunks in transit, and noting fds costs the loop's GIL time per
    #: event.  Receives not noted hold at most this much between them (each was noted-free
    #: only while the whole gap was below it), so the bound allows it on top.
    lost_gap_track_above: int = 64 * 1024

    # --- leaked-buffer --------------------------------------------------------------------
    #: a buffer still held this long after its op ended is leaked
    leak_after: float = 1.0
    #: severity is "critical" once this many bytes are leaked
    leak_critical_bytes: int = 1 << 20
    #: the buffer table is scanned at most this often: under a leak it can hold tens of
    #: thousands of buffers, and the collector thread shares the GIL with the loop
    leak_check_interval: float = 0.2

    # --- stuck-op -------------------------------------------------------------------------
    #: a pending op of one of ``stuck_kinds`` older than this has made no progress
    stuck_after: float = 10.0
    #: ``accept`` and the receive kinds are not here by default: an idle server's pending
    #: accept and an idle connection's pending recv are normal.  Add "accept" to watch a
    #: server that should be getting connections.
    stuck_kinds: tuple[str, ...] = ("send", "sendto", "sendfile", "write_pipe", "connect")
    #: the in-flight table is scanned at most this often (and at least 4 times per
    #: ``stuck_after``): it is a copy and a sort of every pending op, on the loop's GIL
    stuck_check_interval: float = 0.5

    # --- op-climb -------------------------------------------------------------------------
    #: the outstanding-op count is averaged over buckets of this length...
    climb_bucket: float = 1.0
    #: ...within a sliding window of this length, and the sign test runs on the bucket means
    climb_window: float = 20.0
    #: one-sided sign-test p-value at or below which the climb is significant.  Small,
    #: because the test is re-run every bucket over overlapping windows.
    climb_alpha: float = 1e-3
    #: at least this many bucket-to-bucket changes (a flat count is not a trend)...
    climb_min_changes: int = 10
    #: ...and the count must have risen by at least this many ops across the window
    climb_min_rise: int = 8

    # --- loop-lag (Clinic.js Doctor's event-loop-delay thresholds) -------------------------
    lag_window: float = 5.0
    lag_median: float = 0.010
    lag_max: float = 0.100
    #: fewer lag samples than this in the window: no verdict
    lag_min_samples: int = 5
    #: the window is examined at most this often (a copy of the monitor's lag samples)
    lag_check_interval: float = 0.25
