"""The in-process recorder: counters, the outstanding-op table, live buffers and the event ring.

Why it looks the way it does
----------------------------
The backend calls these methods on the loop thread, once per op transition, on the hottest
path the program has.  So each call is: a few plain-int increments, at most one dict
insert/pop, one ``time.monotonic()`` read and one ``deque.append`` of a tuple.  No closures,
no per-op dicts, no ``add_done_callback`` round trips.  An op that finishes inside its
submission call (most ops on the selector-emulated backend) is a single ``op_inline`` call
and never touches the outstanding table.

What keeps a call cheap: an op's id is the sequence number of its first event and a
buffer's id that of its pin event (one plain-int counter instead of three iterators); a
buffer pinned by a pending op lives in the op's ``OpRecord`` (no second object, no
buffer-table entry) until the op ends -- only a buffer *kept* past its op's end gets a
``BufferRecord`` in the table; and counters that are sums (``ops_submitted``,
``ops_completed``, ``ops_failed``, ``buffer_bytes_live``) are properties over the parts the
hot path bumps, so an inline op bumps two ints, not four.

Every method swallows its own exceptions: instrumentation must never raise into the program.
Errors are counted (``instrumentation_errors``) and the last one kept for the snapshot.

Threads: only the loop thread writes.  Other threads (the telemetry collector, a GUI) read
the int counters (atomic under the GIL), copy the dicts (``list(d.values())`` is one C call
and so atomic under the GIL) and pop the ring with ``drain()``: a single consumer.  The ring
is a bounded ``deque``; when nobody drains it the oldest events fall off, and the next
``drain()`` counts them from the gap in sequence numbers.
"""
from __future__ import annotations

import time
from itertools import repeat, starmap
from collections import deque
from typing import Optional

from .events import (
    EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE,
    EV_OP_SUBMIT, FLAG_CANCEL_REQUESTED, FLAG_DISCARDED, FLAG_DRAINED_AT_CLOSE,
    FLAG_LATE_COMPLETION, OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED,
    RECEIVE_KINDS, SEND_KINDS, kind_name,
)
from .snapshot import BufferInfo, OpInfo, Snapshot

_monotonic = time.monotonic
_new_record = object.__new__

# 0: no byte accounting, 1: received from the OS, 2: sent to the OS; indexed by kind
_DIRECTION = tuple(1 if k in RECEIVE_KINDS else 2 if k in SEND_KINDS else 0 for k in range(32))


class OpRecord:
    """One pending op.  Owned by the backend between ``op_start`` and ``op_end``.

    While the op is outstanding, a buffer pinned for it lives in the record itself
    (``buffer_id`` non-zero) rather than in the buffer table; see ``Monitor``.
    """

    __slots__ = ("op_id", "kind", "fd", "requested", "submit_t", "cancel_t",
                 "buffer_id", "buffer_size", "buffer_pin_t", "peer")

    def __init__(self, op_id: int, kind: int, fd: int, requested: int, submit_t: float,
                 buffer_id: int = 0, buffer_size: int = 0) -> None:
        self.op_id = op_id
        self.kind = kind
        self.fd = fd
        self.requested = requested
        self.submit_t = submit_t
        self.cancel_t = 0.0        # 0.0: no cancel requested
        self.buffer_id = buffer_id  # 0: holds no buffer
        self.buffer_size = buffer_size
        self.buffer_pin_t = submit_t if buffer_id else 0.0
        self.peer: Optional[str] = None

    # While its op runs, a pinned buffer is represented by the OpRecord itself (no second
    # object and no buffer-table entry per pending op on the hot path); these read like a
    # BufferRecord.  A buffer kept past its op's end gets a real BufferRecord.
    @property
    def buf_id(self) -> int:
        return self.buffer_id

    @property
    def size(self) -> int:
        return self.buffer_size

    @property
    def pin_t(self) -> float:
        return self.buffer_pin_t

    @property
    def op_end_t(self) -> float:
        return 0.0


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


class Monitor:
    """Records every op and buffer of one event loop.  See the module docstring."""

    def __init__(self, *, ring_capacity: int = 1 << 16, backend: str = "unknown") -> None:
        self.backend = backend
        self.created_wall = time.time()
        self.created_t = _monotonic()
        self.closed = False
        self._ring = deque(maxlen=ring_capacity)      # sets _ring_append too
        self.ring_capacity = ring_capacity
        # the sequence number of the next event; an op's id is the seq of its first event,
        # a buffer's id the seq of its pin event (unique, increasing, never 0)
        self._seq_next = 1
        self._outstanding: dict[int, OpRecord] = {}
        self._buffers: dict[int, BufferRecord] = {}   # buffers held past their op's end
        # counters: plain ints, written only on the loop thread (some are sums: properties)
        self.ops_inline = 0
        self._ops_pended = 0
        self._inline_failed = 0
        self._ended_completed = 0
        self._ended_failed = 0
        self.ops_cancelled = 0
        self.cancel_requests = 0
        self.late_completions = 0
        self.bytes_received = 0
        self.bytes_delivered = 0
        self.bytes_discarded = 0
        self.bytes_abandoned = 0
        self.bytes_sent = 0
        self.buffers_pinned = 0
        self.loop_lag = 0.0
        self.loop_lag_max = 0.0
        self._lag_samples: deque = deque(maxlen=4096)   # (t, lag) for detectors
        self.instrumentation_errors = 0
        self.last_instrumentation_error = ""
        # consumer side (drain)
        self._next_seq = 1
        self.events_dropped = 0
        # alerts raised by detectors (loopmon.detectors); bounded
        self.alerts: deque = deque(maxlen=1000)

    @property
    def _ring(self) -> deque:
        return self._ring_deque

    @_ring.setter
    def _ring(self, ring: deque) -> None:
        # the hot path calls the bound append: rebinding the ring rebinds it
        self._ring_deque = ring
        self._ring_append = ring.append

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

    # ------------------------------------------------------------------ hot path (loop thread)
    def op_inline(self, kind: int, fd: int, requested: int, nbytes: int) -> None:
        """An op submitted and completed successfully within the same call."""
        try:
            seq = self._seq_next
            self._seq_next = seq + 1
            self.ops_inline += 1
            d = _DIRECTION[kind]
            if d == 2:
                self.bytes_sent += nbytes
            elif d == 1:
                self.bytes_received += nbytes
            self._ring_append((seq, EV_OP_INLINE, _monotonic(), seq, kind, fd, requested,
                               OUTCOME_COMPLETED, nbytes, ""))
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    def op_failed_inline(self, kind: int, fd: int, requested: int, exc: BaseException) -> None:
        """An op that failed inside its submission call (no buffer involved)."""
        try:
            seq = self._seq_next
            self._seq_next = seq + 1
            self.ops_inline += 1
            self._inline_failed += 1
            self._ring_append((seq, EV_OP_INLINE, _monotonic(), seq, kind, fd, requested,
                               OUTCOME_FAILED, 0, type(exc).__name__))
        except Exception as err:  # pragma: no cover - defensive
            self._note_error(err)

    def op_start(self, kind: int, fd: int, requested: int) -> Optional[OpRecord]:
        """An op goes pending.  Returns the record to hand back to ``op_end`` (None on error)."""
        try:
            t = _monotonic()
            seq = self._seq_next
            self._seq_next = seq + 1
            rec = OpRecord(seq, kind, fd, requested, t)
            self._outstanding[seq] = rec
            self._ops_pended += 1
            self._ring_append((seq, EV_OP_SUBMIT, t, seq, kind, fd, requested))
            return rec
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)
            return None

    def op_start_pinned(self, kind: int, fd: int, requested: int,
                        size: int) -> Optional[OpRecord]:
        """``op_start`` + ``buffer_pin(rec, size)`` in one call and one clock read.

        The hot path of a pending receive; emits exactly the same two events.
        """
        try:
            t = _monotonic()
            seq = self._seq_next
            buf_id = seq + 1
            self._seq_next = seq + 2
            rec = _new_record(OpRecord)     # OpRecord(...) without the __init__ frame
            rec.op_id = seq
            rec.kind = kind
            rec.fd = fd
            rec.requested = requested
            rec.submit_t = t
            rec.cancel_t = 0.0
            rec.buffer_id = buf_id
            rec.buffer_size = size
            rec.buffer_pin_t = t
            rec.peer = None
            self._outstanding[seq] = rec
            self._ops_pended += 1
            self.buffers_pinned += 1
            ring_append = self._ring_append
            ring_append((seq, EV_OP_SUBMIT, t, seq, kind, fd, requested))
            ring_append((buf_id, EV_BUF_PIN, t, buf_id, seq, size))
            return rec
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)
            return None

    def op_cancel(self, rec: Optional[OpRecord]) -> None:
        """Somebody requested cancellation of a pending op (the op stays in flight)."""
        if rec is None or rec.cancel_t:
            return
        try:
            t = _monotonic()
            rec.cancel_t = t
            self.cancel_requests += 1
            seq = self._seq_next
            self._seq_next = seq + 1
            self._ring_append((seq, EV_OP_CANCEL, t, rec.op_id))
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    def op_end(self, rec: Optional[OpRecord], outcome: int, nbytes: int = 0,
               error: str = "", flags: int = 0, keep_buffer: bool = False) -> None:
        """A pending op ended.  ``nbytes`` is what the OS transferred, delivered or not.

        Releases the op's buffer unless ``keep_buffer`` (which only a buffer-leak fault asks).
        A completion that carries bytes after its cancel was requested, and whose result is
        discarded, must come with ``FLAG_DISCARDED``: those bytes count as lost.
        """
        if rec is None:
            return
        try:
            op_id = rec.op_id
            if self._outstanding.pop(op_id, None) is None:
                return  # ended twice, or drained at close already
            t = _monotonic()
            if rec.cancel_t:
                flags |= FLAG_CANCEL_REQUESTED
                if outcome == OUTCOME_COMPLETED:
                    flags |= FLAG_LATE_COMPLETION
                    self.late_completions += 1
            if outcome == OUTCOME_COMPLETED:
                self._ended_completed += 1
            elif outcome == OUTCOME_CANCELLED:
                self.ops_cancelled += 1
            else:
                self._ended_failed += 1
            if nbytes:
                d = _DIRECTION[rec.kind]
                if d == 1:
                    self.bytes_received += nbytes
                elif d == 2:
                    self.bytes_sent += nbytes
            ring_append = self._ring_append
            seq = self._seq_next
            ring_append((seq, EV_OP_END, t, op_id, outcome, nbytes, error, flags))
            seq += 1
            if flags & FLAG_DISCARDED and nbytes:
                self.bytes_discarded += nbytes
                ring_append((seq, EV_DISCARD, t, op_id, nbytes))
                seq += 1
            buf_id = rec.buffer_id
            if buf_id:
                if keep_buffer:
                    # held past the op's end: into the buffer table (rec keeps its buffer_id,
                    # so a later buffer_release(rec) still finds it)
                    buf = BufferRecord(buf_id, op_id, rec.kind, rec.buffer_size,
                                       rec.buffer_pin_t)
                    buf.op_end_t = t
                    self._buffers[buf_id] = buf
                else:
                    rec.buffer_id = 0
                    ring_append((seq, EV_BUF_RELEASE, t, buf_id))
                    seq += 1
            self._seq_next = seq
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    def buffer_pin(self, rec: Optional[OpRecord], size: int) -> None:
        """The backend allocated or pinned ``size`` bytes for the pending op ``rec``."""
        if rec is None:
            return
        try:
            t = _monotonic()
            seq = self._seq_next
            self._seq_next = seq + 1
            rec.buffer_id = seq
            rec.buffer_size = size
            rec.buffer_pin_t = t
            self.buffers_pinned += 1
            self._ring_append((seq, EV_BUF_PIN, t, seq, rec.op_id, size))
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    def buffer_release(self, rec: Optional[OpRecord]) -> None:
        """The backend let go of the buffer of ``rec`` (before, or -- kept -- after its end)."""
        if rec is None or not rec.buffer_id:
            return
        try:
            buf_id = rec.buffer_id
            rec.buffer_id = 0
            if self._outstanding.get(rec.op_id) is rec:
                self._emit_release(buf_id, _monotonic())
            else:
                self._release(buf_id, _monotonic())
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    def delivered(self, nbytes: int) -> None:
        """``nbytes`` received bytes were handed to a protocol or returned to a caller."""
        try:
            self.bytes_delivered += nbytes
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    def abandoned(self, nbytes: int) -> None:
        """Received bytes a transport still held (paused) when its connection was lost.

        Not a loop bug: the program closed a connection it had paused.  Counted apart so that
        received == delivered + discarded + abandoned holds, and lost-data does not fire on it.
        """
        try:
            self.bytes_abandoned += nbytes
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    def discarded(self, nbytes: int, op_id: int = 0) -> None:
        """Received bytes that will never be delivered, outside of an ``op_end``."""
        try:
            self.bytes_discarded += nbytes
            seq = self._seq_next
            self._seq_next = seq + 1
            self._ring_append((seq, EV_DISCARD, _monotonic(), op_id, nbytes))
        except Exception as exc:  # pragma: no cover - defensive
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
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)

    # ------------------------------------------------------------------ lifecycle
    def drain_at_close(self) -> None:
        """The backend closed: end every op still in flight and release every buffer.

        Called by the backend after it has cancelled and forgotten its own futures, so the
        monitor stays readable after ``loop.close()`` and shows nothing outstanding.
        """
        try:
            for rec in list(self._outstanding.values()):
                self.op_end(rec, OUTCOME_CANCELLED, 0, "", FLAG_DRAINED_AT_CLOSE)
            t = _monotonic()
            for buf_id in list(self._buffers):
                self._release(buf_id, t)
        except Exception as exc:  # pragma: no cover - defensive
            self._note_error(exc)
        self.closed = True

    # ------------------------------------------------------------------ readers (any thread)
    def drain(self, max_items: int = 1 << 30) -> list[tuple]:
        """Pop up to ``max_items`` events.  Single consumer (the telemetry collector).

        Events lost to ring overflow are added to ``events_dropped``.
        """
        ring = self._ring
        popleft = ring.popleft
        try:
            # one C-level loop (no Python per event): only this consumer pops, and the loop
            # thread only appends, so the ring holds at least this many events
            out: list[tuple] = list(starmap(popleft, repeat((), min(len(ring), max_items))))
        except IndexError:  # pragma: no cover - the ring overflowed mid-drain: keep what we got
            out = []
            try:
                for _ in range(max_items):
                    out.append(popleft())
            except IndexError:
                pass
        if out:
            first, last = out[0][0], out[-1][0]
            gap = (first - self._next_seq) + (last - first + 1 - len(out))
            if gap > 0:
                self.events_dropped += gap
            self._next_seq = last + 1
        return out

    def snapshot(self) -> Snapshot:
        """Counters as of now.  Safe to call from any thread, and after ``loop.close()``."""
        now = _monotonic()
        ops = list(self._outstanding.values())
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
        ops = sorted(list(self._outstanding.values()), key=lambda r: r.submit_t)
        return [OpInfo(op_id=r.op_id, kind=kind_name(r.kind), fd=r.fd, requested=r.requested,
                       buffer_size=r.buffer_size, age=now - r.submit_t,
                       cancel_requested=bool(r.cancel_t), peer=r.peer)
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
        bufs += [rec for rec in list(self._outstanding.values()) if rec.buffer_id]
        return bufs

    def _release(self, buf_id: int, t: float) -> None:
        """Release a buffer of the table (one kept past its op's end)."""
        if self._buffers.pop(buf_id, None) is not None:
            self._emit_release(buf_id, t)

    def _emit_release(self, buf_id: int, t: float) -> None:
        seq = self._seq_next
        self._seq_next = seq + 1
        self._ring_append((seq, EV_BUF_RELEASE, t, buf_id))

    def _note_error(self, exc: BaseException) -> None:
        try:
            self.instrumentation_errors += 1
            self.last_instrumentation_error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception:  # pragma: no cover - nothing left to do
            pass
