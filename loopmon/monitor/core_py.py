"""The Monitor's hot path in pure Python: the fallback twin of ``_loopmon_speedups``.

loopmon normally records through the C core (``loopmon/monitor/_speedups.c``), built when
the package is installed.  Where it could not be built (no C compiler) or is switched off
(``LOOPMON_PURE_PYTHON=1``), this class does the same job with the same names, the same
events and the same counters -- only slower (about 5 us of instrumentation per echo round
trip against under 1 us).  The test suite runs both (``tests/core/test_recorder_cores.py``).

How it stays as cheap as Python allows
--------------------------------------
Each call is a few plain-int increments, at most one dict insert/pop, one
``time.monotonic()`` read and one ``deque.append`` of a tuple.  No closures, no per-op
dicts, no ``add_done_callback`` round trips.  An op's id is the sequence number of its first
event and a buffer's id that of its pin event (one counter instead of three iterators); a
buffer pinned by a pending op lives in the op's ``OpRecord`` until the op ends; counters
that are sums are properties over parts (``Monitor.ops_submitted`` ...).

The ring is a bounded ``deque``: when nobody drains it the oldest events fall off, and the
next ``drain()`` counts them from the gap in sequence numbers.  ``drain()`` pops with one
C-level loop (``starmap(popleft, ...)``): only this consumer pops, the loop thread only
appends.

Every method swallows its own exceptions into ``self._note_error`` (``Monitor``).
"""
from __future__ import annotations

import time
from collections import deque
from itertools import repeat, starmap
from typing import Optional

from .events import (
    EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE,
    EV_OP_SUBMIT, FLAG_CANCEL_REQUESTED, FLAG_DISCARDED, FLAG_LATE_COMPLETION, KIND_RECV_INTO,
    KIND_SEND,
    OUTCOME_CANCELLED, OUTCOME_COMPLETED, RECEIVE_KINDS, SEND_KINDS,
)

_monotonic = time.monotonic
_new_record = object.__new__

#: 0: no byte accounting, 1: received from the OS, 2: sent to the OS; indexed by kind
DIRECTIONS = tuple(1 if k in RECEIVE_KINDS else 2 if k in SEND_KINDS else 0 for k in range(32))


def _is_notable(e: tuple) -> bool:
    code = e[1]
    if code == EV_OP_CANCEL or code == EV_DISCARD:
        return True
    if code == EV_OP_INLINE:
        return e[7] != OUTCOME_COMPLETED
    if code == EV_OP_END:
        return e[4] != OUTCOME_COMPLETED or e[7] != 0
    return False


class OpRecord:
    """One pending op.  Owned by the backend between ``op_start`` and ``op_end``.

    While the op is outstanding, a buffer pinned for it lives in the record itself
    (``buffer_id`` non-zero) rather than in the buffer table: the record reads like a
    ``BufferRecord`` (``buf_id``, ``size``, ``pin_t``, ``op_end_t``).
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


class _FailingInserts(dict):
    """The op table while ``_fail_op_table`` is armed: inserts fail until the count is spent."""

    __slots__ = ("_owner",)

    def __init__(self, owner: "PyMonitorCore", items: dict) -> None:
        super().__init__(items)
        self._owner = owner

    def __setitem__(self, key, value) -> None:
        owner = self._owner
        if owner._failing_inserts > 0:
            owner._failing_inserts -= 1
            raise MemoryError("op table insert failed (injected: _fail_op_table)")
        super().__setitem__(key, value)


class PyMonitorCore:
    """Counters, the outstanding-op table and the event ring; hot-path methods in Python."""

    def __init__(self, ring_capacity: int = 1 << 16, ring_max: int = 0) -> None:
        ring_max = max(ring_max, ring_capacity)
        if not 1 <= ring_capacity <= ring_max <= 1 << 28:
            raise ValueError("ring_capacity must be between 1 and 2**28")
        self.ring_capacity = ring_capacity
        self.ring_max = ring_max
        self._ring = deque(maxlen=ring_capacity)
        self._ring_append = self._ring.append
        # the sequence number of the next event; an op's id is the seq of its first event,
        # a buffer's id the seq of its pin event (unique, increasing, never 0)
        self._seq_next = 1
        self._next_seq = 1          # the consumer's next wanted seq
        self._outstanding: dict = {}    # op_id -> OpRecord in flight (the C core: its op table)
        self._failing_inserts = 0       # the test hook's count (_fail_op_table)
        self._buffers: dict = {}     # buffers held past their op's end
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
        self.events_dropped = 0
        self.instrumentation_errors = 0

    def op_inline(self, kind: int, fd: int, requested: int, nbytes: int) -> None:
        try:
            seq = self._seq_next
            self._seq_next = seq + 1
            self.ops_inline += 1
            d = DIRECTIONS[kind]
            if d == 2:
                self.bytes_sent += nbytes
            elif d == 1:
                self.bytes_received += nbytes
            self._ring_append((seq, EV_OP_INLINE, _monotonic(), seq, kind, fd, requested,
                               OUTCOME_COMPLETED, nbytes, ""))
        except Exception as exc:
            self._note_error(exc)

    def op_start(self, kind: int, fd: int, requested: int) -> Optional[OpRecord]:
        try:
            t = _monotonic()
            seq = self._seq_next
            self._seq_next = seq + 1
            rec = OpRecord(seq, kind, fd, requested, t)
            self._outstanding[seq] = rec
            self._ops_pended += 1
            self._ring_append((seq, EV_OP_SUBMIT, t, seq, kind, fd, requested))
            return rec
        except Exception as exc:
            self._note_error(exc)
            return None

    def op_start_pinned(self, kind: int, fd: int, requested: int,
                        size: int) -> Optional[OpRecord]:
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
        except Exception as exc:
            self._note_error(exc)
            return None

    def op_start_recv(self, fd: int, size: int) -> Optional[OpRecord]:
        """``op_start_pinned(KIND_RECV_INTO, fd, size, size)``: a stream's pending receive."""
        return self.op_start_pinned(KIND_RECV_INTO, fd, size, size)

    def op_cancel(self, rec: Optional[OpRecord]) -> None:
        try:
            if rec is None or rec.cancel_t:
                return
            t = _monotonic()
            rec.cancel_t = t
            self.cancel_requests += 1
            seq = self._seq_next
            self._seq_next = seq + 1
            self._ring_append((seq, EV_OP_CANCEL, t, rec.op_id))
        except Exception as exc:
            self._note_error(exc)

    def op_end(self, rec: Optional[OpRecord], outcome: int, nbytes: int = 0,
               error: str = "", flags: int = 0, keep_buffer: bool = False) -> None:
        try:
            if rec is None:
                return
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
                d = DIRECTIONS[rec.kind]
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
            self._seq_next = seq
            buf_id = rec.buffer_id
            if buf_id:
                if keep_buffer:
                    self._keep_buffer(rec, t)
                else:
                    rec.buffer_id = 0
                    self._seq_next = seq + 1
                    ring_append((seq, EV_BUF_RELEASE, t, buf_id))
        except Exception as exc:
            self._note_error(exc)

    def op_done(self, rec: Optional[OpRecord], nbytes: int) -> None:
        """``op_end(rec, OUTCOME_COMPLETED, nbytes)``."""
        self.op_end(rec, OUTCOME_COMPLETED, nbytes)

    def send_whole(self, sock, data) -> int:
        """``sock.send(data)``; recorded as an inline send when all of ``data`` went out.
        The socket's exception propagates (nothing recorded), as from the call itself."""
        n = sock.send(data)
        try:
            if n == memoryview(data).nbytes:
                self.op_inline(KIND_SEND, sock.fileno(), n, n)
        except Exception as exc:
            self._note_error(exc)
        return n

    def recv_into_done(self, rec: Optional[OpRecord], sock, buf) -> int:
        """``sock.recv_into(buf)``, then ``op_done(rec, n)``; the socket's exception
        propagates and leaves the op in flight."""
        n = sock.recv_into(buf)
        self.op_end(rec, OUTCOME_COMPLETED, n)
        return n

    def delivered(self, nbytes: int) -> None:
        try:
            self.bytes_delivered += nbytes
        except Exception as exc:
            self._note_error(exc)

    def _emit(self, code: int, t: float, *fields) -> int:
        """Record an event built on the Python side; returns its sequence number."""
        seq = self._seq_next
        self._seq_next = seq + 1
        self._ring_append((seq, code, t) + fields)
        return seq

    def drain(self, max_items: int = 1 << 30) -> list[tuple]:
        ring = self._ring
        popleft = ring.popleft
        try:
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
                if self.ring_capacity < self.ring_max:
                    self._grow_ring()
            self._next_seq = last + 1
        return out

    def drain_notable(self, max_items: int = 1 << 30) -> list[tuple]:
        """``drain()``, returning only the events a healthy program does not make: cancels,
        discards, inline failures, op ends with flags or an outcome other than completed."""
        return [e for e in self.drain(max_items) if _is_notable(e)]

    def drain_range(self, start: int, stop: int,
                    max_items: int = 1 << 30) -> tuple[int, list[tuple]]:
        """Take up to ``max_items`` events like ``drain()``; return the sequence number of the
        first one taken and the events at positions ``start..stop-1`` of those taken (the C
        core builds only those; here they are all popped, the rest thrown away)."""
        ring = self._ring
        first = ring[0][0] if ring else self._seq_next
        taken = self.drain(max_items)
        return first, taken[max(start, 0):max(stop, 0)]

    def _grow_ring(self) -> None:
        """Double the ring (up to ``ring_max``): the consumer could not keep up."""
        self.ring_capacity = min(self.ring_capacity * 2, self.ring_max)
        self._ring = deque(self._ring, maxlen=self.ring_capacity)
        self._ring_append = self._ring.append

    def events_queued(self) -> int:
        return len(self._ring)

    # the op table's readers (the C core's table is not a dict: these are the interface)
    def _outstanding_records(self) -> list[OpRecord]:
        return list(self._outstanding.values())       # one C call: atomic under the GIL

    def _is_outstanding(self, rec: OpRecord) -> bool:
        return self._outstanding.get(rec.op_id) is rec

    def not_in_flight(self, op_ids) -> set:
        """Those of ``op_ids`` that are not in flight now (ended, or never started)."""
        return set(op_ids).difference(self._outstanding)

    # The test hook: ``_fail_op_table = n`` makes the next n inserts into the op table fail
    # as on MemoryError.  Setting it swaps in a table that fails them, so the hot path
    # itself carries no check (the C core's check is one int compare).
    @property
    def _fail_op_table(self) -> int:
        return self._failing_inserts

    @_fail_op_table.setter
    def _fail_op_table(self, n: int) -> None:
        self._failing_inserts = n
        if n > 0 and type(self._outstanding) is dict:
            self._outstanding = _FailingInserts(self, self._outstanding)

    def _note_error(self, exc: BaseException) -> None:  # pragma: no cover - Monitor's wins
        self.instrumentation_errors += 1

    def _keep_buffer(self, rec: OpRecord, t: float) -> None:  # pragma: no cover - Monitor's
        raise NotImplementedError
