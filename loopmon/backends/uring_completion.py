"""The completion pass of the io_uring proactor: one ``io_uring_enter`` per loop iteration, then
each CQE ends (or continues) its op.

The mechanism
-------------
``select(timeout)`` is what ``BaseProactorEventLoop`` calls once per iteration.  It makes
*one* ``io_uring_enter`` that both submits every SQE the iteration's callbacks queued and
waits for at least one completion (``IORING_ENTER_GETEVENTS``) -- not at all when CQEs are
already posted, the timeout is 0 or the selector fallback has cancelled handles to run; up
to the loop's timeout otherwise, passed as ``IORING_ENTER_EXT_ARG`` (5.11+) or, on older
kernels, as an ``IORING_OP_TIMEOUT`` SQE (``_timeout_sqe``).  Then it reaps every CQE and
completes each op *inline*: ``_inflight[user_data]`` is the op (it is its own future),
``_complete`` sets the future's result, records ``op_end`` on the monitor (one clock read)
and, for the transports' read loop, queues the op's persistent continuation handle
(``_lm_then``) instead of a per-op done callback.  ``select`` returns an empty tuple: the
base loop does nothing with it (its ``_process_events`` is a no-op); the futures are done.

What each CQE result becomes: a byte count (copied out of the pooled buffer for
``recv``/``recvfrom``, into the caller's buffer for a pooled ``recv_into``), an accepted fd
wrapped into a non-blocking ``socket`` with its peer address, ``None`` for a connect, or
``-errno`` turned into the ``OSError`` asyncio raises (a connect's says
``Connect call failed <address>``, as the stdlib's does).

The embedded ``SelectorProactor`` (``add_reader``/``add_writer``, ``sendfile``, write-pipe
waits, anything we cannot express as an SQE) lives behind a one-shot ``POLL_ADD`` on its
epoll fd (``_UD_EPOLL``).  When that fires, the fallback runs a zero-timeout pass of its
own; the poll is re-armed at the *next* ``select``, after the callbacks it woke have run --
so it behaves level-triggered, as a selector loop does.

The traps
---------
* **A CQE for a cancelled op is the kernel's answer, not a result.**  If the future is
  already cancelled, ``_end_cancelled`` records what the kernel actually did: cancelled
  (``-ECANCELED``, a NOP'd SQE, or the readiness poll), failed, or *completed* -- a receive
  that finished before the cancel got there, whose bytes ``uring_carry`` carries over (or,
  with ``cancel-drops-data``, reports discarded).  Only then is the buffer unpinned, and if
  the op held its fd, the ops queued behind it may go (``_unhold``).
* **Sends must finish the whole buffer.**  A stream send may complete short; the
  transports ignore the count, so a short completion resubmits the rest (same op, same
  ``user_data``, the buffer's address plus what is done) until all is sent, and re-pins
  just the remainder in the monitor.
* **O_NONBLOCK pipes may answer -EAGAIN.**  Some kernels honour a file's ``O_NONBLOCK``
  for plain reads and writes (asyncio makes pipes non-blocking) and complete them with
  ``-EAGAIN`` instead of waiting (6.x polls internally); such a completion re-arms the op
  as an ``IORING_OP_POLL_ADD`` for the right direction (``_PHASE_POLL``) and resubmits the
  read/write when the poll fires.
* **The buffer may have changed under a pooled read.**  A caller's ``recv_into`` buffer
  that shrank while the op ran cannot take the bytes: the op fails with ``BufferError``
  rather than write past its end.
* **The completion ring can overflow** (more ops in flight than CQ slots): while the ring
  says so, another ``enter(GETEVENTS)`` flushes the parked CQEs and they are reaped too.
* **Errors that are not errors.**  ``io_uring_enter`` returning ``EINTR`` (a signal),
  ``ETIME`` (the timeout), ``EAGAIN``/``EBUSY`` (completions to reap first) just ends the
  wait; anything else is raised.
* **send-keeps-buffer.**  With that fault a send that fails keeps a real reference to its
  buffer (``_leaked``) and ends with ``keep_buffer=True``: the bpo-32710 signature.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
from typing import Optional

from ..monitor.events import (
    FLAG_DISCARDED, FLAG_DRAINED_AT_CLOSE, KIND_ACCEPT, KIND_CONNECT, KIND_READ_PIPE,
    KIND_RECV, KIND_RECV_INTO, KIND_RECVFROM, KIND_SEND, KIND_SENDTO, KIND_WRITE_PIPE,
    OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED, RECEIVE_KINDS,
)
from .uring_memory import _ADDR_OFFSET, _ADDR_ROOM, _INTO, _decode_sockaddr, _nbytes
from .uring_ops import _PHASE_IO, _PHASE_POLL, _RingOp
from .uring_ring import (
    _ENTER_GETEVENTS, _FIRST_OP_ID, _OP_POLL_ADD, _OP_READ, _OP_SEND, _OP_WRITE, _POLLIN,
    _POLLOUT, _UD_EPOLL,
)

_string_at = ctypes.string_at
_addressof = ctypes.addressof
_c_char = ctypes.c_char


class CompletionMixin:
    """The completion pass, mixed into ``IoUringProactor``.

    Uses its ``_ring``, ``_inflight``, ``_fallback``, ``_epoll_fd``, ``_epoll_armed``,
    ``_timeout_sqe``, ``_carry``, ``_closed``, ``_closing_ids``, ``_leaked``,
    ``_keep_failed_send_buffers``, ``_loop``, ``monitor``; ``_resubmit`` (``SubmissionMixin``),
    ``_carry_late``/``_unhold`` (``CarryOverMixin``), ``_unpin`` (``ReceiveBufferPoolMixin``).
    """

    def select(self, timeout: Optional[float] = None) -> tuple:
        """Submit what this iteration queued, wait for completions, complete their futures."""
        if self._closed:
            return ()
        ring = self._ring
        if not self._epoll_armed:
            ring.push(_OP_POLL_ADD, self._epoll_fd, 0, 0, 0, _POLLIN, _UD_EPOLL)
            self._epoll_armed = True
        fallback_cancelled = bool(self._fallback._cancelled)
        cqes = ring.reap()
        if cqes or fallback_cancelled or (timeout is not None and timeout <= 0):
            ret = ring.enter(0, _ENTER_GETEVENTS)
        elif timeout is not None and self._timeout_sqe:
            ring.push_timeout(timeout)
            ret = ring.enter(1, _ENTER_GETEVENTS)
        else:
            ret = ring.enter(1, _ENTER_GETEVENTS, timeout)
        if ret < 0 and -ret not in (errno.EINTR, errno.ETIME, errno.EAGAIN, errno.EBUSY):
            raise OSError(-ret, f"io_uring_enter: {os.strerror(-ret)}")
        cqes += ring.reap()
        while ring.overflowed():                # the kernel parked completions: fetch them
            ring.enter(0, _ENTER_GETEVENTS)
            more = ring.reap()
            if not more:
                break
            cqes += more
        epoll_ready = False
        complete = self._complete
        for user_data, res, _flags in cqes:
            if user_data >= _FIRST_OP_ID:
                complete(user_data, res)
            elif user_data == _UD_EPOLL:
                epoll_ready = True
                self._epoll_armed = False       # re-armed next pass, after its callbacks ran
        if epoll_ready or fallback_cancelled:
            self._fallback.select(0)
        if self._carry.by_fd:
            self._carry.sweep(self.monitor)
        return ()

    def _complete(self, uid: int, res: int) -> None:
        op = self._inflight.get(uid)
        if op is None:
            return
        opcode, addr, length, off, op_flags = op._lm_sqe
        if op._lm_phase == _PHASE_POLL:         # the readiness poll of an EAGAIN'd pipe op
            if res >= 0 and not op.done():
                op._lm_phase = _PHASE_IO
                self._resubmit(op, opcode, addr + op._lm_done, length - op._lm_done, off,
                               op_flags)
                return
            res = -errno.ECANCELED if res >= 0 or res == -errno.ECANCELED else res
        elif res == -errno.EAGAIN and opcode in (_OP_READ, _OP_WRITE) and not op.done():
            op._lm_phase = _PHASE_POLL          # O_NONBLOCK pipe: wait for readiness first
            self._resubmit(op, _OP_POLL_ADD, 0, 0, 0,
                           _POLLIN if opcode == _OP_READ else _POLLOUT)
            return
        kind = op._lm_kind
        if op.done():                           # cancelled: this CQE is the kernel's answer
            del self._inflight[uid]
            self._end_cancelled(op, res)
            if op._lm_held:                     # the ops queued behind it may go now
                self._unhold(op._lm_fd)
            return
        if res < 0:
            del self._inflight[uid]
            if kind == KIND_CONNECT:
                exc = OSError(-res, f"Connect call failed {op._lm_arg}")
            else:
                exc = OSError(-res, os.strerror(-res))
            self._end_failed(op, exc)
            return
        nbytes = res
        if opcode == _OP_SEND or opcode == _OP_WRITE:
            done = op._lm_done = op._lm_done + res
            if done < length and res > 0:       # short send: the rest, same op
                self._resubmit(op, opcode, addr + done, length - done, off, op_flags)
                rec = op._lm_rec
                if rec is not None:             # what the kernel still reads: the remainder
                    mon = self.monitor
                    mon.buffer_release(rec)
                    mon.buffer_pin(rec, length - done)
                return
            result = nbytes = done
        elif kind == KIND_RECV_INTO or (kind == KIND_READ_PIPE and op._lm_arg is not None):
            dest = op._lm_arg
            if dest is not _INTO and res:
                try:
                    if _nbytes(dest) < res:
                        raise BufferError("recv_into: the buffer shrank while the op ran")
                    ctypes.memmove(_addressof(_c_char.from_buffer(dest)), op._lm_addr, res)
                except (TypeError, ValueError, BufferError) as exc:
                    del self._inflight[uid]
                    self._end_failed(op, exc)
                    return
            result = res
        elif kind == KIND_SENDTO:
            result = res
        elif kind == KIND_RECV or kind == KIND_READ_PIPE:
            result = _string_at(op._lm_addr, res)
        elif kind == KIND_ACCEPT:
            nbytes = 0
            result = self._accepted(res)
        elif kind == KIND_CONNECT:
            result = None
        else:                                   # recvmsg: (data or count, peer address)
            msg = op._lm_arg
            peer = _decode_sockaddr(_string_at(_addressof(msg) + _ADDR_OFFSET, _ADDR_ROOM),
                                    msg.namelen)
            result = (_string_at(op._lm_addr, res) if kind == KIND_RECVFROM else res, peer)
        del self._inflight[uid]
        op._lm_backend = None
        self._unpin(op)
        op.set_result(result)
        if op._lm_then is not None:
            self._loop._add_callback(op._lm_then)
        rec = op._lm_rec
        if rec is not None:
            self.monitor.op_done(rec, nbytes)

    @staticmethod
    def _accepted(fd: int) -> tuple:
        conn = socket.socket(fileno=fd)
        conn.setblocking(False)
        try:
            addr = conn.getpeername()
        except OSError:
            addr = None
        return conn, addr

    def _end_cancelled(self, op: _RingOp, res: int) -> None:
        """The CQE of an op whose future was cancelled: what did the kernel actually do?"""
        kind = op._lm_kind
        carried = False
        if res >= 0 and not op._lm_nop and op._lm_phase == _PHASE_IO:
            carried = self._carry_late(op, res)     # (copies out of the buffer: still pinned)
        self._unpin(op)                         # only now may the buffer go
        rec = op._lm_rec
        if rec is None:
            return
        mon = self.monitor
        if op._lm_nop or res == -errno.ECANCELED or op._lm_phase == _PHASE_POLL:
            mon.op_end(rec, OUTCOME_CANCELLED, op._lm_done, "",
                       FLAG_DRAINED_AT_CLOSE if op._lm_id in self._closing_ids else 0)
        elif res < 0:
            mon.op_end(rec, OUTCOME_FAILED, op._lm_done, errno.errorcode.get(-res, str(-res)))
        elif kind in RECEIVE_KINDS and res > 0:
            # the receive finished in the kernel before the cancel got there: carried over to
            # the next receive, or (cancel-drops-data) real, lost bytes
            mon.op_end(rec, OUTCOME_COMPLETED, res, "", 0 if carried else FLAG_DISCARDED)
        elif kind == KIND_SEND or kind == KIND_WRITE_PIPE or kind == KIND_SENDTO:
            mon.op_end(rec, OUTCOME_COMPLETED, op._lm_done + res)
        else:
            mon.op_end(rec, OUTCOME_COMPLETED, 0)

    def _end_failed(self, op: _RingOp, exc: BaseException) -> None:
        op._lm_backend = None
        keep = op._lm_keep
        if not (self._keep_failed_send_buffers and op._lm_kind in (KIND_SEND, KIND_WRITE_PIPE,
                                                                     KIND_SENDTO)):
            self._unpin(op)
        op._lm_keep = None
        op.set_exception(exc)
        if op._lm_then is not None:
            self._loop._add_callback(op._lm_then)
        rec = op._lm_rec
        leak = (self._keep_failed_send_buffers and keep is not None
                and op._lm_kind in (KIND_SEND, KIND_WRITE_PIPE, KIND_SENDTO))
        if leak:
            self._leaked.append(keep)           # send-keeps-buffer: a real reference kept
        if rec is not None:
            self.monitor.op_end(rec, OUTCOME_FAILED, op._lm_done, type(exc).__name__,
                                keep_buffer=leak)

