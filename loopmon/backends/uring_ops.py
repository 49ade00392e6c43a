"""An io_uring op's life from submission to its cancel request: ``_RingOp`` and the SQE it becomes.

The mechanism
-------------
A submitted op *is* its future: ``_RingOp`` is an ``asyncio.Future`` subclass
(``CancelRequestFuture``, ``common.py``) whose slots hold everything the completion needs --
kind, fd, the SQE fields ``(opcode, addr, length, off, op_flags)``, the buffer keepalive,
bytes done so far, the monitor's record, a continuation handle.  No per-op dicts or
closures.  Its ``user_data`` is its id, and ``_inflight[user_data]`` finds it when the CQE
comes (``uring_completion``).

``_submit`` pushes one SQE into the ring and registers the op; the SQE reaches the kernel
at the next ``io_uring_enter``, which the loop's ``select()`` makes once per iteration --
all SQEs the callbacks of an iteration queued go in one syscall.  The monitor sees the op
start pending, with its buffer pinned when the kernel holds one (``op_start_pinned``).  An
op that cannot even be submitted (a closed socket, a full ring) fails at once through the
selector fallback's ``_failed_inline``, so the program gets the exception asyncio would
raise and the monitor a failed-at-submit op.  ``_submit_msg`` builds the pinned ``msghdr``
of ``recvmsg``/``sendmsg`` (``recvfrom``/``sendto``); ``_resubmit`` pushes the same op again
(same ``user_data``): the rest of a short send, or the I/O after a readiness poll.

An op's *phase* says what its next CQE means: ``_PHASE_IO`` (the I/O itself),
``_PHASE_POLL`` (an ``O_NONBLOCK`` pipe said EAGAIN; this is the readiness poll first), or
``_PHASE_QUEUED`` (not handed to the kernel at all: it waits behind a cancelled receive or
accept on the same fd -- see ``uring_carry``).

The traps
---------
* **A cancel is only a request.**  ``future.cancel()`` cancels the future for its waiter at
  once and calls ``_request_cancel``, which records ``op_cancel`` and submits
  ``IORING_OP_ASYNC_CANCEL`` for the op's ``user_data`` -- *right away* (``enter(0, 0)``),
  not at the next iteration, because until the kernel drops the op it holds its own
  reference to the *file*: a socket the program closes just after the cancel would
  otherwise stay open (a listener keeps listening, a peer sees no EOF).  The op stays in
  ``_inflight``, its buffer pinned, until its own CQE arrives; what that CQE carries is
  ``uring_completion``'s and ``uring_carry``'s business.
* **A cancel before submission is free.**  If the op's SQE is still in the ring, not taken
  by the kernel (``_Ring.unsubmitted``), it is rewritten into a ``NOP`` in place: nothing
  starts, nothing is lost, and the NOP's CQE ends the op as cancelled.
* **A cancelled receive/accept holds its fd** (``_held``): its CQE may yet carry data or a
  connection, which comes before anything a newer op would get, so until it arrives new
  receives/accepts on that fd are queued, not submitted.  A queued op that is cancelled
  never reached the kernel and just ends (``_unqueue``).
* **Sendmsg/recvmsg lengths.**  Their SQE ``len`` is the iovec count (1), not the byte
  count; ``_lm_sqe`` stores what goes in the SQE, ``_lm_n`` the bytes.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
from collections import deque
from typing import Any, Optional

from ..monitor.events import KIND_ACCEPT, RECEIVE_KINDS
from .common import CancelRequestFuture
from .selector import _fileno_or_none
from .uring_memory import _ADDR_ROOM, _MsgHdr
from .uring_ring import _OP_ASYNC_CANCEL, _OP_RECVMSG, _OP_SENDMSG, _UD_IGNORE

# an op's phase: waiting for its I/O, or (O_NONBLOCK pipe said EAGAIN) for a poll first, or
# not handed to the kernel yet: queued behind a cancelled op on its fd (see uring_carry)
_PHASE_IO, _PHASE_POLL, _PHASE_QUEUED = 0, 1, 2
_CARRY_KINDS = RECEIVE_KINDS | {KIND_ACCEPT}   # the kinds whose late results are carried over
_addressof = ctypes.addressof
_socket = socket.socket


class _RingOp(CancelRequestFuture):
    """A submitted op *is* its future; its state lives in these slots until its CQE.

    ``cancel()`` is a request to the kernel (see the module docstring): the future is
    cancelled at once, the op stays in flight -- buffer pinned -- until its completion.
    """

    __slots__ = ("_lm_id", "_lm_kind", "_lm_obj", "_lm_fd", "_lm_sqe",
                 "_lm_addr", "_lm_n", "_lm_arg", "_lm_keep", "_lm_done", "_lm_rec", "_lm_pos",
                 "_lm_phase", "_lm_nop", "_lm_then", "_lm_held")   # + _lm_backend (base class)


class SubmissionMixin:
    """Submission and cancel requests, mixed into ``IoUringProactor``.

    Uses its ``_ring``, ``_inflight``, ``_held``, ``_queued``, ``_next_id``, ``_closed``,
    ``_fallback``, ``_loop``, ``monitor``, and ``_unqueue`` (``CarryOverMixin``).
    """

    def _submit(self, kind: int, obj: Any, opcode: int, addr: int, n: int, off: int,
                op_flags: int, keep: Any, mon: Any, arg: Any = None,
                data_addr: Optional[int] = None, done: int = 0) -> asyncio.Future:
        """Queue one SQE for a new op; it reaches the kernel at the next ``io_uring_enter``."""
        if self._closed:
            raise RuntimeError("the loopmon proactor is closed")
        fd = _fileno_or_none(obj)
        if fd is None:
            return self._fallback._failed_inline(
                kind, obj, n, OSError(errno.EBADF, os.strerror(errno.EBADF)))
        uid = self._next_id
        self._next_id = uid + 1
        sqe = (opcode, addr, 1 if opcode in (_OP_RECVMSG, _OP_SENDMSG) else n, off, op_flags)
        held = self._held
        if held and fd in held and kind in _CARRY_KINDS:
            pos, phase = -1, _PHASE_QUEUED      # behind a cancelled op still in the kernel
        else:
            try:
                pos = self._ring.push(opcode, fd, addr + done, sqe[2] - done, off, op_flags,
                                      uid)
            except OSError as exc:
                return self._fallback._failed_inline(kind, obj, n, exc)
            phase = _PHASE_IO
        op = _RingOp(loop=self._loop)
        op._lm_backend = self
        op._lm_id = uid
        op._lm_kind = kind
        op._lm_obj = obj
        op._lm_fd = fd
        op._lm_sqe = sqe
        op._lm_addr = addr if data_addr is None else data_addr
        op._lm_n = n
        op._lm_arg = arg
        op._lm_keep = keep
        op._lm_done = done
        op._lm_pos = pos
        op._lm_phase = phase
        op._lm_nop = False
        op._lm_then = None
        op._lm_held = False
        if phase == _PHASE_QUEUED:              # pending, but the kernel has no buffer yet
            op._lm_rec = mon.op_start(kind, fd, n) if mon is not None else None
            q = self._queued.get(fd)
            if q is None:
                q = self._queued[fd] = deque()
            q.append(op)
            return op
        if mon is not None:
            op._lm_rec = (mon.op_start_pinned(kind, fd, n, n - done) if keep is not None and n
                          else mon.op_start(kind, fd, n))
        else:
            op._lm_rec = None
        self._inflight[uid] = op
        return op

    def _submit_msg(self, kind: int, conn: _socket, opcode: int, data_addr: int, n: int,
                    flags: int, keep: Any, raw_addr: Optional[bytes]) -> asyncio.Future:
        """RECVMSG/SENDMSG (recvfrom/sendto): a ``msghdr`` pinned alongside the data."""
        msg = _MsgHdr()
        base = _addressof(msg)
        msg.iov = base + _MsgHdr.iov_base.offset
        msg.iovlen = 1
        msg.iov_base = data_addr
        msg.iov_len = n
        if raw_addr is None:                    # receive: room for the peer's address
            msg.name = base + _MsgHdr.addr.offset
            msg.namelen = _ADDR_ROOM
        elif raw_addr:                          # send to an address (b"": connected socket)
            ctypes.memmove(base + _MsgHdr.addr.offset, raw_addr, len(raw_addr))
            msg.name = base + _MsgHdr.addr.offset
            msg.namelen = len(raw_addr)
        return self._submit(kind, conn, opcode, base, n, 0, flags, (keep, msg), self.monitor,
                            msg, data_addr)

    def _resubmit(self, op: _RingOp, opcode: int, addr: int, length: int, off: int,
                  op_flags: int) -> None:
        """The same op again (rest of a short send, or the I/O after its readiness poll)."""
        op._lm_pos = self._ring.push(opcode, op._lm_fd, addr, length, off, op_flags, op._lm_id)

    def _request_cancel(self, op: _RingOp) -> None:
        """``_RingOp.cancel()``: ask the kernel to stop; the op ends with its own CQE."""
        if op._lm_phase == _PHASE_QUEUED:       # the kernel never saw it: it ends right here
            self._unqueue(op)
            return
        rec = op._lm_rec
        if rec is not None:
            self.monitor.op_cancel(rec)
        ring = self._ring
        if ring.unsubmitted(op._lm_pos):
            ring.make_nop(op._lm_pos)           # never reached the kernel: nothing can happen
            op._lm_nop = True
            return
        if op._lm_kind in _CARRY_KINDS:         # its result may yet be carried: hold the fd
            op._lm_held = True
            fd = op._lm_fd
            self._held[fd] = self._held.get(fd, 0) + 1
        try:
            ring.push(_OP_ASYNC_CANCEL, -1, op._lm_id, 0, 0, 0, _UD_IGNORE)
            ring.enter(0, 0)                    # now: the kernel holds the file until then
        except OSError:
            pass                                # the op's own CQE still ends it

