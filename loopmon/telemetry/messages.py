"""Typed telemetry messages: what the agent sends and what ``loopmon.client`` yields.

This module is the contract between the telemetry layer (agent, wire codec, recordings) and
every consumer (the Qt app, ``loopmon stat``, tests).  The wire codec (``loopmon.telemetry.wire``)
turns each class into one frame type; ``docs/PROTOCOL.md`` documents the bytes.

Time: ``t`` fields are the *monitored process's* ``time.monotonic()``; ``wall`` fields are its
``time.time()``.  A consumer plots against ``t - hello.started_t`` or against ``wall``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 1


@dataclass(frozen=True)
class Hello:
    """First message on every connection: who the target is."""

    protocol_major: int
    protocol_minor: int
    pid: int
    argv: list[str]
    python: str                 # e.g. "3.11.7"
    backend: str                # "selector" | "io_uring" | "iocp" | ...
    sample_period: float        # seconds between Sample messages
    started_t: float            # monotonic time the loop / agent started
    started_wall: float


@dataclass(frozen=True)
class Sample:
    """One sampling period: the monitor's counters plus process figures.

    ``counters`` holds the fields of ``loopmon.monitor.Snapshot`` by the same names
    (``ops_outstanding``, ``ops_outstanding_by_kind``, ``bytes_received``, ``loop_lag`` ...).
    """

    t: float
    wall: float
    counters: dict[str, Any]
    rss: int = 0                # bytes
    cpu_percent: float = 0.0
    num_threads: int = 0
    num_fds: int = 0


@dataclass(frozen=True)
class OpEvents:
    """A batch of raw op / buffer events, each a tuple laid out as in ``loopmon.monitor.events``."""

    events: list[tuple]


@dataclass(frozen=True)
class Outstanding:
    """The in-flight ops at one instant (sent in the connect-time snapshot, and periodically).

    Each op is a dict with the fields of ``loopmon.monitor.OpInfo``.
    """

    t: float
    ops: list[dict[str, Any]]


@dataclass(frozen=True)
class Alert:
    """A detector fired.  ``kind`` is one of: lost-data, leaked-buffer, stuck-op, op-climb, loop-lag."""

    kind: str
    severity: str               # "warning" | "critical"
    t: float
    wall: float
    message: str                # one line
    evidence: dict[str, Any] = field(default_factory=dict)   # op ids, counts, bytes


@dataclass(frozen=True)
class History:
    """Connect-time backlog: the recent samples and alerts, oldest first, so a late attach
    starts with a filled graph."""

    samples: list[Sample]
    alerts: list[Alert]


@dataclass(frozen=True)
class Dropped:
    """The agent dropped ``count`` messages for this client because it read too slowly
    (``total`` since it connected)."""

    count: int
    total: int


@dataclass(frozen=True)
class Goodbye:
    """The target is going away (loop closed, program exiting)."""

    reason: str


Message = Union[Hello, Sample, OpEvents, Outstanding, Alert, History, Dropped, Goodbye]
