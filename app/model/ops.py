"""What is in flight, and what recently was: the outstanding-op table and op lifecycles.

Two views are built from the same inputs:

* ``OutstandingOps`` — the ops in flight *now*, keyed by op id.  An ``Outstanding`` message is
  authoritative (it is the agent's full table at one instant) and replaces the set; between
  those, ``OpEvents`` keep it current (``EV_OP_SUBMIT`` adds, ``EV_OP_END`` removes,
  ``EV_OP_CANCEL`` marks, ``EV_BUF_PIN`` fills the buffer size).  Each row stores the op's
  submission time on the *target's* clock, so its age is ``target_now - submit_t`` and the Qt
  table can recompute ages without new data.
* ``OpLifecycles`` — recent ops that went pending, as ``(start, end, outcome)`` spans for the
  timeline.  Ops that complete inside their submission call (``EV_OP_INLINE``, the bulk of the
  traffic) have no span worth drawing and are only counted — except inline *failures*, which
  are the bpo-32710 signature and get a zero-length span so they show as a tick.

Traps: events can be lost (ring overflow, a slow client) so an ``EV_OP_END`` may arrive for an
op we never saw start (ignored), and a start may never see its end (the next ``Outstanding``
message clears it).  Both structures are capped so a runaway target cannot grow the app.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from loopmon.monitor.events import (
    EV_BUF_PIN, EV_DISCARD, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE, EV_OP_SUBMIT,
    FLAG_DISCARDED, OUTCOME_FAILED, kind_name,
)

MAX_OUTSTANDING_ROWS = 50_000
SNAPSHOT_CAP_HINT = 1_000     # the collector lists at most this many ops (oldest first)
MAX_LIFECYCLES = 8_000        # ~10 s of a busy cancel-heavy target

# Outcomes as the timeline colours them (one more than the wire's: "lost" = discarded bytes).
SPAN_PENDING = 0
SPAN_COMPLETED = 1
SPAN_CANCELLED = 2
SPAN_FAILED = 3
SPAN_LOST = 4
SPAN_NAMES = ("pending", "completed", "cancelled", "failed", "lost data")


@dataclass
class OpRow:
    """One in-flight op as the table shows it."""

    op_id: int
    kind: str
    fd: int
    requested: int
    buffer_size: int
    submit_t: float          # target monotonic clock
    cancel_requested: bool = False
    peer: Optional[str] = None

    @property
    def endpoint(self) -> str:
        return f"fd {self.fd} · {self.peer}" if self.peer else f"fd {self.fd}"

    @property
    def nbytes(self) -> int:
        return self.buffer_size or self.requested


class OutstandingOps:
    """The in-flight op table, keyed by op id (insertion-ordered: oldest first)."""

    def __init__(self, cap: int = MAX_OUTSTANDING_ROWS) -> None:
        self.rows: dict[int, OpRow] = {}
        self.cap = cap
        self.overflow = 0          # starts ignored because the table was full
        # fd -> peer from the last snapshot: op events carry only the fd, so a row born from
        # an event borrows its connection's peer (replaced wholesale by each snapshot, so a
        # closed connection's fd number is not labelled with its old peer for long)
        self.peers: dict[int, str] = {}

    def replace(self, t: float, ops: Iterable[dict[str, Any]]) -> None:
        """Adopt an authoritative ``Outstanding`` snapshot taken at target time ``t``."""
        rows: dict[int, OpRow] = {}
        for op in ops:
            try:
                op_id = int(op["op_id"])
                rows[op_id] = OpRow(
                    op_id=op_id, kind=str(op.get("kind", "?")), fd=int(op.get("fd", -1)),
                    requested=int(op.get("requested", 0)),
                    buffer_size=int(op.get("buffer_size", 0)),
                    submit_t=t - float(op.get("age", 0.0)),
                    cancel_requested=bool(op.get("cancel_requested", False)),
                    peer=op.get("peer"))
            except (KeyError, TypeError, ValueError):
                continue   # a malformed op from a newer peer: skip the row, keep the table
            if len(rows) >= self.cap:
                break
        # ops submitted after the snapshot was taken, that we already know from events
        for op_id, row in self.rows.items():
            if row.submit_t > t and op_id not in rows and len(rows) < self.cap:
                rows[op_id] = row
        if len(rows) >= SNAPSHOT_CAP_HINT and rows:
            # the agent caps a snapshot at its oldest N ops: ops we know of from events that are
            # newer than the snapshot's newest are not gone, just not listed
            newest = max(r.submit_t for r in rows.values())
            for op_id, row in self.rows.items():
                if op_id not in rows and row.submit_t > newest and len(rows) < self.cap:
                    rows[op_id] = row
        # the snapshot is the truth; the Qt model diffs by op id, so row identity does not matter
        self.rows = dict(sorted(rows.items(), key=lambda kv: kv[1].submit_t))
        self.peers = {row.fd: row.peer for row in self.rows.values() if row.peer}

    def apply(self, ev: tuple) -> None:
        code = ev[1]
        if code == EV_OP_SUBMIT:
            if len(self.rows) >= self.cap:
                self.overflow += 1
                return
            _, _, t, op_id, kind, fd, requested = ev[:7]
            self.rows[op_id] = OpRow(op_id, kind_name(kind), fd, requested, 0, t,
                                     peer=self.peers.get(fd))
        elif code == EV_OP_END:
            self.rows.pop(ev[3], None)
        elif code == EV_OP_CANCEL:
            row = self.rows.get(ev[3])
            if row is not None:
                row.cancel_requested = True
        elif code == EV_BUF_PIN:
            row = self.rows.get(ev[4])
            if row is not None:
                row.buffer_size = ev[5]

    def clear(self) -> None:
        self.rows.clear()
        self.peers.clear()


@dataclass
class Span:
    """One op lifecycle for the timeline (target clock)."""

    op_id: int
    kind: str
    start: float
    end: float               # == start while pending (drawn up to "now")
    outcome: int             # SPAN_*
    cancel_t: float = 0.0
    nbytes: int = 0


class OpLifecycles:
    """Recent op spans: the open ones by id, the finished ones in a bounded deque."""

    def __init__(self, cap: int = MAX_LIFECYCLES) -> None:
        self.open: dict[int, Span] = {}
        self.finished: deque[Span] = deque(maxlen=cap)
        self.cap = cap
        self.inline_ops = 0

    def apply(self, ev: tuple) -> None:
        code = ev[1]
        if code == EV_OP_INLINE:
            self.inline_ops += 1
            if ev[7] == OUTCOME_FAILED:
                self.finished.append(Span(ev[3], kind_name(ev[4]), ev[2], ev[2], SPAN_FAILED))
        elif code == EV_OP_SUBMIT:
            if len(self.open) < self.cap:
                self.open[ev[3]] = Span(ev[3], kind_name(ev[4]), ev[2], ev[2], SPAN_PENDING)
        elif code == EV_OP_CANCEL:
            span = self.open.get(ev[3])
            if span is not None:
                span.cancel_t = ev[2]
        elif code == EV_OP_END:
            span = self.open.pop(ev[3], None)
            if span is None:
                return
            _, _, t, _, outcome, nbytes, _err, flags = ev[:8]
            span.end = t
            span.nbytes = nbytes
            if flags & FLAG_DISCARDED:
                span.outcome = SPAN_LOST
            else:
                span.outcome = outcome if 1 <= outcome <= 3 else SPAN_FAILED
            self.finished.append(span)
        elif code == EV_DISCARD:
            # a discard outside op_end (or right after it): mark the finished span if recent
            for span in reversed(self.finished):
                if span.op_id == ev[3]:
                    span.outcome = SPAN_LOST
                    break

    def sync_open(self, rows: dict[int, "OpRow"], t: float) -> None:
        """Align the open spans with an authoritative in-flight table (an ``Outstanding``).

        Ops in flight before we attached have no ``EV_OP_SUBMIT`` we could have seen: they get a
        span from their submission time.  Open spans the table (taken at target time ``t``) no
        longer lists ended while events were lost: their end is unknown, so they are dropped
        rather than guessed — unless they started after ``t``.
        """
        for op_id in [k for k, sp in self.open.items() if k not in rows and sp.start <= t]:
            del self.open[op_id]
        for op_id, row in rows.items():
            if op_id not in self.open and len(self.open) < self.cap:
                span = Span(op_id, row.kind, row.submit_t, row.submit_t, SPAN_PENDING)
                if row.cancel_requested:
                    span.cancel_t = row.submit_t
                self.open[op_id] = span

    def spans_since(self, t_from: float) -> list[Span]:
        """Spans that overlap ``[t_from, now]``: finished ones, then the open ones."""
        # finished spans are appended as they end, so walk back from the newest and stop at
        # the first that ended before t_from (a deque of 8 000 costs nothing to skip)
        out = list(itertools.takewhile(lambda s: s.end >= t_from, reversed(self.finished)))
        out.reverse()
        out.extend(s for s in list(self.open.values()))
        return out

    def drop_open(self) -> None:
        """The target went away: nothing is in flight any more (ends unknown)."""
        self.open.clear()

    def clear(self) -> None:
        self.open.clear()
        self.finished.clear()
        self.inline_ops = 0
