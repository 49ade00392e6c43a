"""The in-process recorder: counters, the outstanding-op table, live buffers and the event ring.

Two halves
----------
The backend calls the hot-path methods -- ``op_inline``, ``op_start``, ``op_start_pinned``,
``op_cancel``, ``op_end``, ``delivered``, the stream receive's shorthands
``op_start_recv``/``op_done``, and ``send_whole``/``recv_into_done``, which make the socket's
own call and record it in the same call -- on the loop thread, once per op transition, on the
hottest path the program has (the hottest call sites hold them as bound methods, made once:
see ``_speedups.c``).  Those live in a *core*: the C extension
``_loopmon_speedups`` (``loopmon/monitor/_speedups.c``: a call is a few int increments, one
clock read and a struct written into a preallocated ring slot) or, where it could not be
built or ``LOOPMON_PURE_PYTHON=1`` asks for it, its pure-Python twin
``loopmon.monitor.core_py``.  ``IMPLEMENTATION`` says which one runs.

Everything else is here, once, for both cores: rare events (inline failures, explicit
buffer pins and releases, discards outside an op's end, abandoned bytes), buffers kept past
their op's end (``_keep_buffer``), lag samples, close, error notes, and the readers
(``snapshot``, ``outstanding``, ``live_buffers``, ``drain`` from the core).  Rare events go
through the core's ``_emit(code, t, *fields)``, which checks the layout of
``loopmon.monitor.events``.

Ids: an op's id is the sequence number of its first event and a buffer's id that of its pin
event, so both come from the one ``_seq_next`` counter.  A buffer pinned by a pending op
lives in the op's ``OpRecord`` (no buffer-table entry on the hot path) until the op ends;
only a buffer *kept* past its op's end gets a ``BufferRecord`` in ``_buffers``.  Counters
that are sums (``ops_submitted``, ``ops_completed``, ``ops_failed``, ``buffer_bytes_live``)
are properties over the parts the hot path bumps.

Every method swallows its own exceptions: instrumentation must never raise into the program.
Errors are counted (``instrumentation_errors``) and the last one kept for the snapshot.

Threads: only the loop thread writes.  Other threads (the telemetry collector, a GUI) read
the int counters (atomic under the GIL), copy the op table (``_outstanding_records()``) and
the buffer dict (``list(d.values())``), each one C call and so atomic under the GIL, and
take events with ``drain()``: a single consumer.  Two
variants take the same events but build fewer tuples: ``drain_notable()`` only cancels,
discards, failures and flagged ends; ``drain_range(start, stop)`` only a window (the
telemetry collector's sampler).  The ring is bounded; when nobody drains it the oldest
events are overwritten, and the next drain counts them in ``events_dropped``.  It starts small
(``RING_CAPACITY``: in C, 512 KiB, so that it stays in a core's L2 cache beside the program's
own data) and doubles, up to ``RING_MAX``, each time a drain finds it was lapped: a consumer
that cannot keep up loses events once, then gets room.
"""
from __future__ import annotations

import os
import time
import warnings
from collections import deque
from typing import Optional

from . import events as _events
from .core_py import DIRECTIONS, OpRecord as PyOpRecord, PyMonitorCore
from .events import (
    EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_INLINE, FLAG_DRAINED_AT_CLOSE,
    OUTCOME_CANCELLED, OUTCOME_FAILED, kind_name,
)
from .snapshot import BufferInfo, OpInfo, Snapshot

_monotonic = time.monotonic

_SPEEDUPS_ABI = 4

RING_CAPACITY = 1 << 13   # events the ring starts with: 512 KiB of 64-byte slots in the C core
RING_MAX = 1 << 16        # ... and may double up to when its consumer falls behind


def _load_c_core():
    """The C core, or None (not built, switched off, or built for another loopmon)."""
    if os.environ.get("LOOPMON_PURE_PYTHON", "").strip() not in ("", "0"):
        return None
    try:
        import _loopmon_speedups as c
    except ImportError:
        return None
    mismatched = [k for k, v in c.CONSTANTS.items() if getattr(_events, k, None) != v]
    if getattr(c, "ABI_VERSION", None) != _SPEEDUPS_ABI or mismatched:
        warnings.warn(f"_loopmon_speedups does not match this loopmon (ABI "
                      f"{getattr(c, 'ABI_VERSION', None)}, mismatched {mismatched}); "
                      "using the pure-Python recorder", RuntimeWarning, stacklevel=2)
        return None
    c._set_directions(DIRECTIONS)
    return c


class BufferRecord:
    """A buffer the backend allocated or pinned on behalf of an op, held past the op's end."""

    __slots__ = ("buf_id", "op_id", "kind", "size", "pin_t", "op_end_t")

    def __init__(self, buf_id: int, op_id: int, kind: int, size: int, pin_t: float) -> None:
        self.buf_id = buf_id
        self.op_id = op_id
        self.kind = kind
        self.size = size
        self.pin_t = pin_t
        self.op_end_t = 0.0        # set when the owning op ends while the buffer is still held


class _MonitorCommon:
    """The part of ``Monitor`` shared by both cores.  See the module docstring."""

    def __init__(self, *, ring_capacity: Optional[int] = None, ring_max: Optional[int] = None,
                 backend: str = "unknown") -> None:
        # A ring that fits in a core's L2 cache next to the program's own working set (see
        # "The ring" in _speedups.c), doubling up to RING_MAX when a drain finds it overflowed.
        # An explicit ring_capacity is fixed unless ring_max says otherwise.
        if ring_capacity is None:
            ring_capacity, ring_max = RING_CAPACITY, max(ring_max or RING_MAX, RING_CAPACITY)
        super().__init__(ring_capacity=ring_capacity, ring_max=ring_max or ring_capacity)
        self.backend = backend
        self.created_wall = time.time()
        self.created_t = _monotonic()
        self.closed = False
        self.loop_lag = 0.0
        self.loop_lag_max = 0.0
        self._lag_samples: deque = deque(maxlen=4096)   # (t, lag) for detectors
        self.last_instrumentation_error = ""
        # alerts raised by detectors (loopmon.detectors); bounded
        self.alerts: deque = deque(maxlen=1000)
        # fd -> peer address of a connected transport, for the op table (note_peer)
        self._peers: dict[int, str] = {}

    # counters kept as parts on the hot path (fewer increments per op), summed on read
    @property
    def ops_submitted(self) -> int:
        return self.ops_inline + self._ops_pended

    @property
    def ops_completed(self) -> int:
        return self.ops_inline - self._inline_failed + self._ended_completed

    @property
    def ops_failed(self) -> int:
        return self._inline_failed + self._ended_failed

    @property
    def buffer_bytes_live(self) -> int:
        return sum(b.size for b in self._live_buffer_records())

    # ------------------------------------------------------------------ rare events (loop thread)
    def op_failed_inline(self, kind: int, fd: int, requested: int, exc: BaseException) -> None:
        """An op that failed inside its submission call (no buffer involved)."""
        try:
            self.ops_inline += 1
            self._inline_failed += 1
            seq = self._seq_next
            self._emit(EV_OP_INLINE, _monotonic(), seq, kind, fd, requested, OUTCOME_FAILED, 0,
                       type(exc).__name__)
        except Exception as err:
            self._note_error(err)

    def buffer_pin(self, rec, size: int) -> None:
        """The backend allocated or pinned ``size`` bytes for the pending op ``rec``."""
        if rec is None:
            return
        try:
            t = _monotonic()
            buf_id = self._seq_next
            self._emit(EV_BUF_PIN, t, buf_id, rec.op_id, size)
            rec.buffer_id = buf_id
            rec.buffer_size = size
            rec.buffer_pin_t = t
            self.buffers_pinned += 1
        except Exception as exc:
            self._note_error(exc)

    def buffer_release(self, rec) -> None:
        """The backend let go of the buffer of ``rec`` (before, or -- kept -- after its end)."""
        if rec is None or not rec.buffer_id:
            return
        try:
            buf_id = rec.buffer_id
            rec.buffer_id = 0
            if self._is_outstanding(rec):
                self._emit(EV_BUF_RELEASE, _monotonic(), buf_id)
            else:
                self._release(buf_id, _monotonic())
        except Exception as exc:
            self._note_error(exc)

    def abandoned(self, nbytes: int) -> None:
        """Received bytes a transport still held (paused) when its connection was lost.

        Not a loop bug: the program closed a connection it had paused.  Counted apart so that
        received == delivered + discarded + abandoned holds, and lost-data does not fire on it.
        """
        try:
            self.bytes_abandoned += nbytes
        except Exception as exc:
            self._note_error(exc)

    def discarded(self, nbytes: int, op_id: int = 0) -> None:
        """Received bytes that will never be delivered, outside of an ``op_end``."""
        try:
            self.bytes_discarded += nbytes
            self._emit(EV_DISCARD, _monotonic(), op_id, nbytes)
        except Exception as exc:
            self._note_error(exc)

    def record_lag(self, lag: float) -> None:
        """Delay of the loop's periodic lag timer, in seconds."""
        try:
            if lag < 0.0:
                lag = 0.0
            self.loop_lag = lag
            if lag > self.loop_lag_max:
                self.loop_lag_max = lag
            self._lag_samples.append((_monotonic(), lag))
        except Exception as exc:
            self._note_error(exc)

    def note_peer(self, fd: int, peer: str) -> None:
        """``fd`` is a connection to ``peer``: shown beside its ops by ``outstanding()``.

        Called once per connection (by the transports), not per op: ops carry only their fd,
        and the peer is looked up when somebody reads the table.
        """
        try:
            self._peers[fd] = peer
        except Exception as exc:
            self._note_error(exc)

    def forget_peer(self, fd: int) -> None:
        """The connection on ``fd`` is gone (the number may come back for another one)."""
        try:
            self._peers.pop(fd, None)
        except Exception as exc:
            self._note_error(exc)

    def _keep_buffer(self, rec, t: float) -> None:
        """``op_end(..., keep_buffer=True)``: the buffer outlives its op, into the table.

        ``rec`` keeps its ``buffer_id``, so a later ``buffer_release(rec)`` still finds it.
        Only a buffer-leak fault asks for this.
        """
        buf = BufferRecord(rec.buffer_id, rec.op_id, rec.kind, rec.buffer_size, rec.buffer_pin_t)
        buf.op_end_t = t
        self._buffers[rec.buffer_id] = buf

    # ------------------------------------------------------------------ lifecycle
    def drain_at_close(self) -> None:
        """The backend closed: end every op still in flight and release every buffer.

        Called by the backend after it has cancelled and forgotten its own futures, so the
        monitor stays readable after ``loop.close()`` and shows nothing outstanding.
        """
        try:
            for rec in self._outstanding_records():
                self.op_end(rec, OUTCOME_CANCELLED, 0, "", FLAG_DRAINED_AT_CLOSE)
            t = _monotonic()
            for buf_id in list(self._buffers):
                self._release(buf_id, t)
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)
        self.closed = True

    # ------------------------------------------------------------------ readers (any thread)
    def snapshot(self) -> Snapshot:
        """Counters as of now.  Safe to call from any thread, and after ``loop.close()``."""
        now = _monotonic()
        ops = self._outstanding_records()
        by_kind: dict[str, int] = {}
        for rec in ops:
            name = kind_name(rec.kind)
            by_kind[name] = by_kind.get(name, 0) + 1
        bufs = list(self._buffers.values())
        bufs += [rec for rec in ops if rec.buffer_id]
        return Snapshot(
            time=now, wall=time.time(), backend=self.backend, closed=self.closed,
            ops_outstanding=len(ops), ops_outstanding_by_kind=by_kind,
            ops_submitted=self.ops_submitted, ops_completed=self.ops_completed,
            ops_cancelled=self.ops_cancelled, ops_failed=self.ops_failed,
            ops_inline=self.ops_inline, cancel_requests=self.cancel_requests,
            late_completions=self.late_completions,
            bytes_received=self.bytes_received, bytes_delivered=self.bytes_delivered,
            bytes_discarded=self.bytes_discarded, bytes_abandoned=self.bytes_abandoned,
            bytes_sent=self.bytes_sent,
            buffers_live=len(bufs), buffer_bytes_live=sum(b.size for b in bufs),
            loop_lag=self.loop_lag, loop_lag_max=self.loop_lag_max,
            events_dropped=self.events_dropped,
            instrumentation_errors=self.instrumentation_errors,
            last_instrumentation_error=self.last_instrumentation_error,
        )

    def outstanding(self) -> list[OpInfo]:
        """In-flight ops, oldest first, with their ages in seconds."""
        now = _monotonic()
        ops = sorted(self._outstanding_records(), key=lambda r: r.submit_t)
        peers = self._peers.copy()
        return [OpInfo(op_id=r.op_id, kind=kind_name(r.kind), fd=r.fd, requested=r.requested,
                       buffer_size=r.buffer_size, age=now - r.submit_t,
                       cancel_requested=bool(r.cancel_t), peer=r.peer or peers.get(r.fd))
                for r in ops]

    def live_buffers(self) -> list[BufferInfo]:
        """Buffers currently held, with how long they have been held after their op ended."""
        now = _monotonic()
        return [BufferInfo(buf_id=b.buf_id, op_id=b.op_id, kind=kind_name(b.kind), size=b.size,
                           age=now - b.pin_t,
                           held_after_op_end=(now - b.op_end_t) if b.op_end_t else 0.0)
                for b in self._live_buffer_records()]

    def lag_samples(self, since: float = 0.0) -> list[tuple[float, float]]:
        """``(monotonic time, lag seconds)`` samples newer than ``since``."""
        return [s for s in list(self._lag_samples) if s[0] > since]

    # ------------------------------------------------------------------ internals
    def _live_buffer_records(self) -> list:
        """Buffers held now: kept ones (table) and those of outstanding ops (the records)."""
        bufs: list = list(self._buffers.values())
        bufs += [rec for rec in self._outstanding_records() if rec.buffer_id]
        return bufs

    def _release(self, buf_id: int, t: float) -> None:
        """Release a buffer of the table (one kept past its op's end)."""
        if self._buffers.pop(buf_id, None) is not None:
            self._emit(EV_BUF_RELEASE, t, buf_id)

    def _note_error(self, exc: BaseException) -> None:
        """Count an exception raised inside instrumentation (the C core calls this too)."""
        try:
            self.instrumentation_errors += 1
            self.last_instrumentation_error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception:  # pragma: no cover - nothing left to do
            pass


class PyMonitor(_MonitorCommon, PyMonitorCore):
    """``Monitor`` on the pure-Python core."""


_c_core = _load_c_core()
if _c_core is not None:
    class CMonitor(_MonitorCommon, _c_core.MonitorCore):
        """``Monitor`` on the C core (``_loopmon_speedups``)."""

    Monitor = CMonitor
    OpRecord = _c_core.OpRecord
    IMPLEMENTATION = "c"
else:
    CMonitor = None
    Monitor = PyMonitor
    OpRecord = PyOpRecord
    IMPLEMENTATION = "python"
