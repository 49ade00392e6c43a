"""Late completions of cancelled ops: carry their results over, and queue new ops behind them.

The trap this module exists for (bpo-33694)
-------------------------------------------
On io_uring a cancel is only a request (``uring_ops``).  The op's own CQE still comes, and
it may say ``-ECANCELED`` -- or it may carry data, because the receive finished in the
kernel before the cancel got there.  That is the bpo-33694 trap, and here it is not a fault
we inject: it is what the kernel does.  It is no rare race either: the kernel completes a
waiting receive as soon as data arrives (at the latest, as task work, when the loop's
thread next leaves a system call -- e.g. right after the ``send()`` to the other end of a
socketpair), so a cancel that follows the data almost always finds the receive done.  The
future is cancelled, so the result cannot go to its caller; dropping it loses bytes --
what pre-fix asyncio did.

So by default the late result -- bytes, a datagram, an accepted connection -- is *carried
over* (``_carry_late`` -> ``_CarryOver``) and handed to the next receive or accept on the
same socket, which then completes inline (``_from_carry``): a cancelled
``sock_recv``/``sock_accept`` loses nothing, as asyncio promises.  A stream receive that
asks for less than is carried gets a prefix and leaves the rest first in line; a datagram
is one per receive, cut to the receive's size (the cut bytes reported discarded, as the
kernel would truncate).

The order rule
--------------
The order of the stream depends on one more rule, that of overlapped I/O: while a cancelled
receive or accept on an fd still waits for its CQE, a new receive/accept on that fd does
not go to the kernel -- it would read the bytes *after* the ones the cancelled op may yet
carry, or wait forever for a connection already accepted.  The cancel request counts the
fd held (``_held[fd]``); new receives/accepts on it queue (``_queued[fd]``, FIFO; each a
pending op in the monitor, no buffer pinned).  When the last such CQE is in (``_unhold``)
the queued ops complete from what it carried, in order (``_complete_from_carry``), and the
rest go to the ring.  A queued op that is cancelled just ends (``_unqueue``): the kernel
never saw it.  This is no corner case: ``fut.cancel()`` then at once ``sock_recv`` in the
same task is what ``asyncio.wait_for`` does on 3.12+ (it no longer runs the awaitable in a
task).

What the monitor sees
---------------------
The late completion ends its op ``OUTCOME_COMPLETED`` with ``FLAG_LATE_COMPLETION`` and its
bytes, counted received then; the op that takes them over records 0 bytes (not counted
twice) and the transport or ``sock_*`` caller counts them delivered.  If nobody comes for
them -- the socket closes (``_CarryOver.sweep`` after every completion pass, or a new object
on the same fd number), the loop closes (``drop_all``) -- they are reported with
``Monitor.discarded`` (and a carried connection is closed).  The ``cancel-drops-data``
fault turns the carry-over off and gives the raw behaviour: the op ends with
``FLAG_DISCARDED``, the bytes counted in ``bytes_discarded`` -- real kernel completions,
really dropped.  Either way ``bytes_received == bytes_delivered + bytes_discarded`` holds.

Traps
-----
* **Keyed by fd, remembering the object.**  A different socket object on the same fd
  number means the old one was closed and the number reused: what it carried is dropped.
* **A queued op whose socket closed while it waited** fails with ``EBADF`` instead of
  being submitted on a number that may now be someone else's.
* **The copy-out happens before the unpin**: ``_carry_late`` reads the late bytes out of
  the op's pooled buffer, which is still pinned until ``_end_cancelled`` releases it.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
from collections import deque
from typing import Any, Optional

from ..monitor.events import (
    FLAG_DRAINED_AT_CLOSE, KIND_ACCEPT, KIND_READ_PIPE, KIND_RECV, KIND_RECVFROM,
    KIND_RECVFROM_INTO, OUTCOME_CANCELLED, OUTCOME_COMPLETED, RECEIVE_KINDS,
)
from .selector import _fileno_or_none
from .uring_memory import _ADDR_OFFSET, _ADDR_ROOM, _INTO, _decode_sockaddr
from .uring_ops import _PHASE_IO, _RingOp

_socket = socket.socket
_string_at = ctypes.string_at
_addressof = ctypes.addressof


class _CarryOver:
    """Results of cancelled ops that completed anyway, kept for the next op on the same object.

    A late receive's bytes (or datagram, or accepted connection) go to the next receive (or
    accept) on that socket, so a cancelled ``sock_recv`` loses nothing, as asyncio promises.
    Keyed by fd, remembering the object: a different object on the same fd number means the
    old one was closed, and what it carried is dropped (reported as discarded).  What is
    carried is only taken in order if nothing can be carried after it while the next op
    runs: the proactor holds new receives/accepts back while a cancelled one is in the
    kernel (``IoUringProactor._held``/``_queued``).
    """

    __slots__ = ("by_fd",)

    def __init__(self) -> None:
        self.by_fd: dict[int, tuple] = {}

    def put(self, obj: Any, fd: int, item: Any, mon: Any) -> None:
        entry = self.by_fd.get(fd)
        if entry is None or entry[0] is not obj:
            if entry is not None:
                self.drop(fd, mon)
            entry = self.by_fd[fd] = (obj, deque())
        entry[1].append(item)

    def take(self, obj: Any, mon: Any) -> Optional[deque]:
        """The queue of results for ``obj``, or None."""
        fd = _fileno_or_none(obj)
        entry = self.by_fd.get(fd) if fd is not None else None
        if entry is None:
            return None
        if entry[0] is not obj:
            self.drop(fd, mon)
            return None
        return entry[1]

    def done_with(self, obj: Any, q: deque) -> None:
        if not q:
            fd = _fileno_or_none(obj)
            entry = self.by_fd.get(fd)
            if entry is not None and entry[1] is q:
                del self.by_fd[fd]

    def drop(self, fd: int, mon: Any) -> None:
        entry = self.by_fd.pop(fd, None)
        for item in entry[1] if entry is not None else ():
            data = item[0] if type(item) is tuple else item
            if isinstance(data, _socket):
                data.close()                    # a connection nobody took
            elif data and mon is not None:
                mon.discarded(len(data))

    def sweep(self, mon: Any) -> None:
        """Drop what closed sockets carried: nobody can receive it any more."""
        for fd, entry in list(self.by_fd.items()):
            if _fileno_or_none(entry[0]) != fd:
                self.drop(fd, mon)

    def drop_all(self, mon: Any) -> None:
        for fd in list(self.by_fd):
            self.drop(fd, mon)


class CarryOverMixin:
    """Carry-over and the per-fd queue behind cancelled ops, mixed into ``IoUringProactor``.

    Uses its ``_carry`` (a ``_CarryOver``), ``_held``, ``_queued``, ``_inflight``, ``_ring``,
    ``_drop_cancelled_data``, ``_closing_ids``, ``_loop``, ``monitor``, and ``_accepted``,
    ``_end_failed`` (``CompletionMixin``), ``_unpin`` (``ReceiveBufferPoolMixin``).
    """

    def _carried(self, conn: Any, mon: Any) -> Optional[deque]:
        """The carried results for ``conn`` -- or None while a cancelled receive/accept on
        its fd is still in the kernel: its result may come yet, and it comes first, so the
        new op queues behind it (``_submit``) instead of taking what is carried now."""
        if self._held and _fileno_or_none(conn) in self._held:
            return None
        return self._carry.take(conn, mon)

    def _take_carried(self, kind: int, q: deque, nbytes: int) -> tuple:
        """``(data or accepted item, peer)``: the next carried result for an op of ``kind``
        wanting up to ``nbytes`` -- popped from ``q``, or cut (a stream keeps the rest)."""
        item = q[0]
        if kind == KIND_ACCEPT:
            q.popleft()
            return item, None
        data, peer = item if type(item) is tuple else (item, None)
        if kind == KIND_RECVFROM or kind == KIND_RECVFROM_INTO or type(item) is tuple:
            q.popleft()                         # a datagram: one per receive, cut to fit
            if len(data) > nbytes and self.monitor is not None:
                self.monitor.discarded(len(data) - nbytes)
            data = data[:nbytes]
        elif len(data) > nbytes:
            q[0] = data[nbytes:]
            data = data[:nbytes]
        else:
            q.popleft()
        return data, peer

    def _from_carry(self, kind: int, conn: Any, q: deque, nbytes: int,
                    buf: Any) -> asyncio.Future:
        """Complete a receive/accept inline from a late completion carried over.

        Its bytes were counted as received when the late completion arrived; this op
        records 0 so they are not counted twice (the caller counts them delivered).
        """
        data, peer = self._take_carried(kind, q, nbytes)
        if kind == KIND_ACCEPT:
            result = data
        else:
            if buf is not None:
                memoryview(buf).cast("B")[:len(data)] = data
                data = len(data)
            result = (data, peer) if kind in (KIND_RECVFROM, KIND_RECVFROM_INTO) else data
        self._carry.done_with(conn, q)
        mon = self.monitor
        if mon is not None:
            mon.op_inline(kind, conn.fileno(), nbytes, 0)
        fut = self._loop.create_future()
        fut.set_result(result)
        return fut

    def _unqueue(self, op: _RingOp) -> None:
        """A queued op is cancelled: it never reached the kernel, so it just ends."""
        fd = op._lm_fd
        q = self._queued.get(fd)
        if q is not None:
            try:
                q.remove(op)
            except ValueError:
                pass
            if not q:
                del self._queued[fd]
        op._lm_backend = None
        self._unpin(op)
        rec = op._lm_rec
        if rec is not None:
            mon = self.monitor
            mon.op_cancel(rec)
            mon.op_end(rec, OUTCOME_CANCELLED, 0, "",
                       FLAG_DRAINED_AT_CLOSE if op._lm_id in self._closing_ids else 0)

    def _unhold(self, fd: int) -> None:
        """A cancelled receive/accept on ``fd`` has its CQE: once it was the last one, the
        ops queued behind it go -- from what it carried, in order, then to the ring."""
        left = self._held[fd] - 1
        if left:
            self._held[fd] = left
            return
        del self._held[fd]
        queued = self._queued.pop(fd, None)
        mon = self.monitor
        while queued:
            op = queued.popleft()
            obj = op._lm_obj
            if _fileno_or_none(obj) != fd:      # closed while it waited (the fd may be reused)
                self._end_failed(op, OSError(errno.EBADF, os.strerror(errno.EBADF)))
                continue
            q = self._carry.take(obj, mon) if self._carry.by_fd else None
            if q is not None:
                self._complete_from_carry(op, q)
                continue
            opcode, addr, length, off, op_flags = op._lm_sqe
            done = op._lm_done
            try:
                op._lm_pos = self._ring.push(opcode, fd, addr + done, length - done, off,
                                             op_flags, op._lm_id)
            except OSError as exc:
                self._end_failed(op, exc)
                continue
            op._lm_phase = _PHASE_IO
            self._inflight[op._lm_id] = op
            rec = op._lm_rec
            if rec is not None and op._lm_keep is not None and op._lm_n:
                mon.buffer_pin(rec, op._lm_n - done)    # now the kernel has it

    def _complete_from_carry(self, op: _RingOp, q: deque) -> None:
        """A queued op completes with a carried result (``_from_carry`` for a pending op)."""
        kind = op._lm_kind
        dest = op._lm_arg
        data, peer = self._take_carried(kind, q, op._lm_n)
        self._carry.done_with(op._lm_obj, q)
        if kind == KIND_ACCEPT or kind == KIND_RECV or (kind == KIND_READ_PIPE and dest is None):
            result = data
        elif kind == KIND_RECVFROM:
            result = (data, peer)
        else:                                   # into the caller's buffer
            n = len(data)
            try:
                if kind == KIND_RECVFROM_INTO or dest is _INTO:
                    ctypes.memmove(op._lm_addr, data, n)    # the caller's memory, pinned
                else:
                    memoryview(dest).cast("B")[:n] = data
            except (TypeError, ValueError, BufferError) as exc:
                if self.monitor is not None:
                    self.monitor.discarded(n)
                self._end_failed(op, exc)
                return
            result = (n, peer) if kind == KIND_RECVFROM_INTO else n
        op._lm_backend = None
        self._unpin(op)
        op.set_result(result)
        if op._lm_then is not None:
            self._loop._add_callback(op._lm_then)
        rec = op._lm_rec
        if rec is not None:                     # counted received by the late completion
            self.monitor.op_end(rec, OUTCOME_COMPLETED, 0)

    def _carry_late(self, op: _RingOp, res: int) -> bool:
        """A cancelled op completed anyway: keep its result for the next op on its object."""
        kind = op._lm_kind
        if kind == KIND_ACCEPT:
            try:
                item = self._accepted(res)
            except OSError:
                os.close(res)
                return False
        elif kind in RECEIVE_KINDS and res > 0 and not self._drop_cancelled_data:
            data = _string_at(op._lm_addr, res)
            if kind == KIND_RECVFROM or kind == KIND_RECVFROM_INTO:
                msg = op._lm_arg
                item = (data, _decode_sockaddr(
                    _string_at(_addressof(msg) + _ADDR_OFFSET, _ADDR_ROOM), msg.namelen))
            else:
                item = data
        else:
            return False
        self._carry.put(op._lm_obj, op._lm_fd, item, self.monitor)
        return True

