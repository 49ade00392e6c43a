"""The selector-emulated backend's read-side submissions: receives, accept, pipe-closed waits.

Every method here **tries the syscall first**.  On a busy connection most receives succeed
at once; such an op completes *inline*: an already-finished future and a single
``Monitor.op_inline`` event (``op_failed_inline`` when it raised), nothing in the
outstanding table.  Only ``BlockingIOError`` makes the op pending (``selector_ops._pend``):
it waits in its fd's reader queue for the completion pass (``selector_completion``).

Socket methods call the socket's own ``recv``/``recv_into``/``recvfrom``/... ; pipe
transports hand us file objects, which read with ``os.read``/``os.readv`` and record
``KIND_READ_PIPE``.

The traps:

* **Don't pay for a doomed syscall.**  "Try first" costs a syscall and a
  ``BlockingIOError`` when it fails, and in a request/response exchange the receive after
  one that emptied the socket almost always fails.  So an fd remembers whether its last
  pending ``recv_into`` drained it (``FdWaiters.drained``) and the next ``recv_into_then``
  goes straight to pending -- with ``_pend`` inlined, this being a stream's hot path.
  Readiness is level-triggered, so data that arrived meanwhile completes it on the very
  next ``select()``.  ``drained`` is only ever true on a live record watched for reading
  (``fdtable``), but the record must still be this socket's (``st.obj is conn``).
* **The stream hot path skips the future machinery.**  A socket transport reads through
  one persistent ``StreamReceive`` (``stream_receiver``; see ``stream_receive``): no future,
  no done callback, no ``Handle`` per chunk.  Pipes keep ``recv_into_then``: a persistent
  loop handle ``then`` queued when the receive ends (at once when inline, never when it
  is cancelled), but a future per receive.  Both record exactly what ``recv_into`` records.
* **A failed receive still queues ``then``**: the transport's read loop learns of the
  error from the future, as it would from a done callback.
* **Internal fds are not recorded.**  The loop's self-pipe reader uses ``recv_unrecorded``.
* **An accepted socket must be non-blocking** before anybody sees it.
* **A write pipe learns that its reader went away from readability of its write end**
  (``wait_pipe_closed``): a read-side op on a write-only fd.
"""
from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, Optional

from ..monitor.events import (
    KIND_ACCEPT, KIND_READ_PIPE, KIND_RECV, KIND_RECV_INTO, KIND_RECVFROM, KIND_RECVFROM_INTO,
    KIND_WAIT,
)
from .fdtable import _READ
from .selector_ops import _WOULD_BLOCK, _PendingOp
from .stream_receive import StreamReceive

_socket = socket.socket


class ReceiveSubmitMixin:
    """The read-side op methods of ``SelectorProactor`` (see the module docstring)."""

    def recv(self, conn: Any, nbytes: int, flags: int = 0) -> asyncio.Future:
        if isinstance(conn, _socket):
            kind = KIND_RECV
            try:
                data = conn.recv(nbytes, flags)
            except _WOULD_BLOCK:
                return self._pend(KIND_RECV, conn, None, nbytes, flags, False, self.monitor)
            except Exception as exc:
                return self._failed_inline(kind, conn, nbytes, exc)
        else:
            kind = KIND_READ_PIPE
            try:
                data = os.read(conn.fileno(), nbytes)
            except _WOULD_BLOCK:
                return self._pend(KIND_READ_PIPE, conn, None, nbytes, 0, False, self.monitor)
            except Exception as exc:
                return self._failed_inline(kind, conn, nbytes, exc)
        mon = self.monitor
        if mon is not None:
            mon.op_inline(kind, conn.fileno(), nbytes, len(data))
        fut = self._loop.create_future()
        fut.set_result(data)
        return fut

    def recv_unrecorded(self, conn: _socket, nbytes: int) -> asyncio.Future:
        """``recv`` for the loop's own fds (the self-pipe): never shows in the monitor."""
        try:
            data = conn.recv(nbytes)
        except _WOULD_BLOCK:
            return self._pend(KIND_RECV, conn, None, nbytes, 0, False, None)
        fut = self._loop.create_future()
        fut.set_result(data)
        return fut

    def recv_into(self, conn: Any, buf: Any, flags: int = 0) -> asyncio.Future:
        return self.recv_into_then(conn, buf, None, flags)

    def recv_into_then(self, conn: Any, buf: Any, then: Optional[asyncio.Handle],
                       flags: int = 0) -> asyncio.Future:
        """``recv_into`` whose completion also queues the loop handle ``then``.

        For a transport's read loop (``transport_reads._ContinuedReadMixin``): ``then`` (a handle
        nobody cancels: it goes straight onto the ready queue) is queued
        when the op completes or fails -- at once when that happens inline -- and never when
        it is cancelled.  It replaces a done callback per receive.
        """
        if isinstance(conn, _socket):
            kind = KIND_RECV_INTO
            st = self._fds.get(conn.fileno())
            if st is not None and st.drained and st.obj is conn and st.mask & _READ:
                # the last receive emptied the socket: don't pay for a doomed syscall.
                # _pend() inlined (the hot path of a stream's read loop): st is conn's,
                # the selector already watches it for reading.
                if self._closed:
                    raise RuntimeError("the loopmon proactor is closed")
                op = _PendingOp(loop=self._loop)
                op._lm_backend = self
                op._lm_kind = KIND_RECV_INTO
                op._lm_obj = conn
                op._lm_fd = st.fd
                op._lm_buf = buf
                op._lm_n = n = len(buf)
                op._lm_arg = flags
                op._lm_done = 0
                op._lm_cont = then
                mon = self.monitor
                op._lm_rec = (None if mon is None
                              else mon.op_start_recv(st.fd, n))
                st.readers.append(op)
                return op
            try:
                n = conn.recv_into(buf, 0, flags)
            except _WOULD_BLOCK:
                return self._pend(KIND_RECV_INTO, conn, buf, len(buf), flags, False,
                                  self.monitor, st if st is not None and st.obj is conn else None,
                                  then)
            except Exception as exc:
                fut = self._failed_inline(kind, conn, len(buf), exc)
                if then is not None:
                    self._loop._add_callback(then)
                return fut
        else:
            kind = KIND_READ_PIPE
            try:
                n = os.readv(conn.fileno(), (buf,))
            except _WOULD_BLOCK:
                return self._pend(KIND_READ_PIPE, conn, buf, len(buf), 0, False, self.monitor,
                                  None, then)
            except Exception as exc:
                fut = self._failed_inline(kind, conn, len(buf), exc)
                if then is not None:
                    self._loop._add_callback(then)
                return fut
        mon = self.monitor
        if mon is not None:
            mon.op_inline(kind, conn.fileno(), len(buf), n)
        fut = self._loop.create_future()
        fut.set_result(n)
        if then is not None:
            self._loop._ready.append(then)       # a handle nobody cancels
        return fut

    def stream_receiver(self, sock: Any, buf: Any,
                        handle: asyncio.Handle) -> Optional[StreamReceive]:
        """A socket transport's persistent receive into ``buf`` (``stream_receive``).

        ``handle`` is queued whenever a receive it issues completes or fails, as for
        ``recv_into_then``.  None for what is not a socket (pipes use ``recv_into_then``).
        """
        if not isinstance(sock, _socket):
            return None
        return StreamReceive(self, sock, buf, handle)

    def recvfrom(self, conn: _socket, nbytes: int, flags: int = 0) -> asyncio.Future:
        try:
            res = conn.recvfrom(nbytes, flags)
        except _WOULD_BLOCK:
            return self._pend(KIND_RECVFROM, conn, None, nbytes, flags, False, self.monitor)
        except Exception as exc:
            return self._failed_inline(KIND_RECVFROM, conn, nbytes, exc)
        return self._done_inline(KIND_RECVFROM, conn, nbytes, len(res[0]), res)

    def recvfrom_into(self, conn: _socket, buf: Any, nbytes: int = 0,
                      flags: int = 0) -> asyncio.Future:
        if not nbytes:
            nbytes = len(buf)
        try:
            res = conn.recvfrom_into(buf, nbytes, flags)
        except _WOULD_BLOCK:
            op = self._pend(KIND_RECVFROM_INTO, conn, buf, nbytes, flags, False, self.monitor)
            return op
        except Exception as exc:
            return self._failed_inline(KIND_RECVFROM_INTO, conn, nbytes, exc)
        return self._done_inline(KIND_RECVFROM_INTO, conn, nbytes, res[0], res)

    def accept(self, listener: _socket) -> asyncio.Future:
        try:
            conn, addr = listener.accept()
        except _WOULD_BLOCK:
            return self._pend(KIND_ACCEPT, listener, None, 0, 0, False, self.monitor)
        except Exception as exc:
            return self._failed_inline(KIND_ACCEPT, listener, 0, exc)
        conn.setblocking(False)
        return self._done_inline(KIND_ACCEPT, listener, 0, 0, (conn, addr))

    def wait_pipe_closed(self, pipe: Any) -> asyncio.Future:
        """Completes with ``b''`` when the write end ``pipe`` sees its reader go away.

        The proactor write-pipe transport learns of a closed reader from a pending read; on
        POSIX the write end of a pipe reports readiness (EPOLLERR/HUP) when the reader closes.
        """
        return self._pend(KIND_WAIT, pipe, None, 0, 0, False, self.monitor)
