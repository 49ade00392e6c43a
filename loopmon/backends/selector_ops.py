"""An op's life in the selector-emulated backend, from "would block" to its end.

An op that completes in its submission call never gets here: it is one ``Monitor.op_inline``
event and an already-finished future (``_done_inline``/``_failed_inline``).  Everything in
this module is for the op whose syscall raised ``BlockingIOError``:

* ``_pend`` makes it *pending*.  The op **is** its future: a ``_PendingOp`` (an
  ``asyncio.Future`` subclass, ``common.CancelRequestFuture``) whose slots hold the kind, the
  object, the fd, the buffer, the byte counts, the monitor's record and an optional loop
  handle to queue when it ends (``_lm_cont``, for ``recv_into_then``).  No per-op dict, no
  closure, no done callback.  ``_pend`` records ``op_start`` (``op_start_pinned`` when the
  op holds memory: the receive size, or the unsent rest of a send), queues the op on its
  fd's record (``fdtable.FdWaiters``, found or made by ``_waiters_for``) and makes the
  selector watch that direction.  ``_pend_stream_receive`` does the same for a socket
  transport's persistent ``StreamReceive``.
* The completion pass (``selector_completion``) ends it with ``op_end``; a failure goes
  through ``_end_failed``, which drops the buffer and still queues ``_lm_cont``.
* A cancel is a *request* (the IOCP ``_OverlappedFuture`` pattern): ``_PendingOp.cancel()``
  cancels the future for its waiter at once and calls ``_request_cancel``, which takes the
  op off its queue, records ``op_cancel`` and parks it in ``_cancelled``.  The op stays in
  flight -- outstanding in the monitor, its buffer pinned -- until ``_finish_cancelled``
  delivers its cancelled completion on the next ``select()`` pass, exactly where IOCP
  would deliver the ``ERROR_OPERATION_ABORTED`` packet.

Traps:

* **The gap between a cancel request and its completion is where bpo-33694 lived.**  The
  opt-in fault ``cancel-drops-data`` (``faults``) re-creates it in ``_finish_cancelled``:
  a cancelled receive whose socket already holds data reads it and drops it (recorded
  ``FLAG_DISCARDED``: received, never delivered).
* **Every path that ends an op clears ``_lm_backend``** (so a late ``cancel()`` does not
  request twice) **and ``_lm_buf``** (an ended op must not keep its buffer alive; on a
  ``StreamReceive`` that setter is a no-op, its buffer is the transport's).
* **Peers of ``sock_*`` sockets, and fd numbers that come back.**  Transports tell the monitor
  who is on the other end of their fd (``Monitor.note_peer``/``forget_peer``); a socket used
  with the loop's ``sock_*`` calls has nobody to do that, and is closed without telling
  anybody, so its number comes back with the next socket.  The fd table is the one place
  that notices a new object on a number, so it sets the fd's peer there (``_waiters_for`` ->
  ``_note_peer_of``: ``getpeername``, or none) -- once per object, never per op -- and
  again when a connect completes (``selector_send.connect``, ``selector_completion``).
  Only pending ops are listed by ``Monitor.outstanding()``, and every pending op of this
  backend is queued on such a record, so a stale peer of a closed socket never shows beside
  the ops of its successor.  A proactor embedded in another backend (io_uring's fallback)
  sets no peers: it sees only some of an fd's ops, so it could not take one back.
* ``_pend`` is inlined in ``selector_receive.recv_into_then``'s drained path (a stream's
  hot path): a change to one must be made to the other.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Optional

from ..monitor.events import (
    FLAG_DISCARDED, OUTCOME_CANCELLED, OUTCOME_FAILED, RECEIVE_KINDS,
)
from ..transports import _peer_text   # one spelling of an address, as transports note theirs
from .common import CancelRequestFuture
from .fdtable import _READ, _WRITE, FdWaiters, _fd_or_minus_one, _fileno_or_none
from .stream_receive import StreamReceive

_socket = socket.socket
_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class _PendingOp(CancelRequestFuture):
    """A pending op *is* its future: the backend's per-op state lives in these slots.

    ``cancel()`` is a request to the backend (see the module docstring); the future itself
    is cancelled at once, the op ends on the next ``select()`` pass.
    """

    __slots__ = ("_lm_kind", "_lm_obj", "_lm_fd", "_lm_buf", "_lm_n",
                 "_lm_arg", "_lm_done", "_lm_rec", "_lm_cont")   # + _lm_backend (base class)


class PendingOpsMixin:
    """Pending ops of ``SelectorProactor``: queue, cancel, fail, end (see the module docstring).

    Uses its ``monitor``, ``_loop``, ``_fds``, ``_cancelled``, ``_closed``, the fault flags
    (``faults``) and ``_set_mask``/``_replace_stale`` (``fdtable``).
    """

    def _pend(self, kind: int, obj: Any, buf: Any, n: int, arg: Any, write: bool,
              mon: Any, st: Optional[FdWaiters] = None,
              cont: Optional[asyncio.Handle] = None) -> _PendingOp:
        """Queue an op that would block; the future is its state (no per-op dict/closure).

        ``st``: the caller already looked up ``obj``'s record (and it is ``obj``'s).
        ``cont``: a loop handle to queue when the op completes or fails (``recv_into_then``).
        """
        if self._closed:
            raise RuntimeError("the loopmon proactor is closed")
        if st is None:
            st = self._waiters_for(obj)
        fd = st.fd
        op = _PendingOp(loop=self._loop)
        op._lm_backend = self
        op._lm_kind = kind
        op._lm_obj = obj
        op._lm_fd = fd
        op._lm_buf = buf
        op._lm_n = n
        op._lm_arg = arg
        op._lm_done = 0
        op._lm_cont = cont
        if mon is not None:
            if kind in RECEIVE_KINDS:
                op._lm_rec = mon.op_start_pinned(kind, fd, n, n)
            elif buf is not None:
                op._lm_rec = mon.op_start_pinned(kind, fd, n, len(buf))
            else:
                op._lm_rec = mon.op_start(kind, fd, n)
        else:
            op._lm_rec = None
        if write:
            st.writers.append(op)
            if not st.mask & _WRITE:
                self._set_mask(st, st.mask | _WRITE)
        else:
            st.readers.append(op)
            if not st.mask & _READ:
                self._set_mask(st, st.mask | _READ)
        return op

    def _waiters_for(self, obj: Any) -> FdWaiters:
        """``obj``'s record in the fd table, made (or made anew, if stale) as needed."""
        fd = obj.fileno()
        st = self._fds.get(fd)
        if st is None:
            st = self._fds[fd] = FdWaiters(fd, obj)
            self._note_peer_of(fd, obj)
        elif st.obj is not obj:
            if st.obj is None:
                st.obj = obj            # made by add_reader(fd): the ops' object joins it
                self._note_peer_of(fd, obj)
            elif _fileno_or_none(st.obj) != fd:
                st = self._replace_stale(st, obj)
                self._note_peer_of(fd, obj)
        return st

    def _note_peer_of(self, fd: int, obj: Any) -> None:
        """The peer shown beside ``fd``'s ops becomes ``obj``'s own (or none): a new object
        waits on ``fd``, or its connect just completed.

        The number may have belonged to a closed connection whose peer the monitor still
        holds (a ``sock_*`` socket is closed without telling anybody), so this always sets
        or clears it.  Once per object on an fd (and per connect), never per op.
        """
        mon = self.monitor
        if mon is None or getattr(self._loop, "_proactor", None) is not self:
            # embedded in another backend (io_uring's fallback): this table sees only some of
            # an fd's ops, so it could not take back a peer whose socket has gone
            return
        peer = ""
        if isinstance(obj, _socket):
            try:
                peer = _peer_text(obj.getpeername())
            except Exception:           # not connected (a listener, unconnected UDP), or gone
                pass
        if peer:
            mon.note_peer(fd, peer)
        else:
            mon.forget_peer(fd)

    def _pend_stream_receive(self, r: StreamReceive, st: Optional[FdWaiters]) -> None:
        """``StreamReceive.start()`` would block: queue it as ``_pend`` queues a receive."""
        if self._closed:
            raise RuntimeError("the loopmon proactor is closed")
        if st is None:
            st = self._waiters_for(r._lm_obj)
        r._lm_st = st
        r._lm_backend = self
        mon = self.monitor
        if mon is not None:
            r._lm_rec = mon.op_start_recv(st.fd, r._lm_n)
        st.readers.append(r)
        if not st.mask & _READ:
            self._set_mask(st, st.mask | _READ)

    def _request_cancel_stream_receive(self, r: StreamReceive, detached: Any) -> None:
        """``StreamReceive.cancel()``: ``detached`` carries the op to its cancelled end."""
        try:
            r._lm_st.readers.remove(r)      # a pending receive waits in its record's queue
        except ValueError:
            pass
        self._cancelled.append(detached)
        rec = detached._lm_rec
        if rec is not None:
            self.monitor.op_cancel(rec)

    def _done_inline(self, kind: int, obj: Any, requested: int, nbytes: int,
                     result: Any) -> asyncio.Future:
        mon = self.monitor
        if mon is not None:
            mon.op_inline(kind, obj.fileno(), requested, nbytes)
        fut = self._loop.create_future()
        fut.set_result(result)
        return fut

    def _failed_inline(self, kind: int, obj: Any, requested: int,
                       exc: BaseException) -> asyncio.Future:
        mon = self.monitor
        if mon is not None:
            mon.op_failed_inline(kind, _fd_or_minus_one(obj), requested, exc)
        fut = self._loop.create_future()
        fut.set_exception(exc)
        return fut

    def _end_failed(self, op: _PendingOp, exc: BaseException) -> None:
        op._lm_backend = None
        op._lm_buf = None
        if not op.done():
            op.set_exception(exc)
            if op._lm_cont is not None:
                self._loop._add_callback(op._lm_cont)
        rec = op._lm_rec
        if rec is not None:
            self.monitor.op_end(rec, OUTCOME_FAILED, op._lm_done, type(exc).__name__)

    def _request_cancel(self, op: _PendingOp) -> None:
        """``_PendingOp.cancel()``: stop waiting; the cancelled completion comes next select()."""
        st = self._fds.get(op._lm_fd)
        if st is not None:
            try:
                (st.writers if op in st.writers else st.readers).remove(op)
            except ValueError:
                pass
        self._cancelled.append(op)
        rec = op._lm_rec
        if rec is not None:
            self.monitor.op_cancel(rec)

    def _finish_cancelled(self) -> None:
        """Deliver the cancelled completions (the IOCP ERROR_OPERATION_ABORTED packets)."""
        ops, self._cancelled = self._cancelled, []
        mon = self.monitor
        for op in ops:
            dropped = 0
            if self._drop_cancelled_data and op._lm_kind in RECEIVE_KINDS:
                dropped = self._read_and_drop(op)
            op._lm_buf = None
            rec = op._lm_rec
            if rec is not None:
                if dropped:
                    mon.op_end(rec, OUTCOME_CANCELLED, dropped, "", FLAG_DISCARDED)
                else:
                    mon.op_end(rec, OUTCOME_CANCELLED, op._lm_done)
