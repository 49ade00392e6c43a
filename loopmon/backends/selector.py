"""The selector-emulated proactor: completion-style ops on top of readiness.

How it works
------------
``BaseProactorEventLoop`` hands us whole operations -- "receive into this buffer", "send
all of these bytes", "accept" -- and wants a future back.  POSIX offers readiness instead
(``epoll``/``kqueue`` via ``selectors``): it tells us when a syscall *would not block*.  We
bridge the two the cheap way round: **try the syscall first**.  On a busy connection most
receives and nearly all sends succeed at once; such an op completes *inline*: we return an
already-finished future and record a single ``Monitor.op_inline`` event, with no entry in
the outstanding table.  Only when the syscall raises ``BlockingIOError`` does the op go
*pending*: we record ``op_start`` (and ``buffer_pin`` for the bytes the op holds -- the
receive size, or the unsent rest of a send), queue it on its file descriptor, and make sure
the selector watches that fd in the right direction.  ``select(timeout)`` -- called by the
loop once per iteration, exactly where ``IocpProactor`` calls ``GetQueuedCompletionStatus``
-- waits, retries the syscall for every op whose fd became ready, and completes futures
(``op_end``).  Futures completed here run their callbacks in the same loop iteration.

Each fd has one small ``FdWaiters`` record (``fdtable``): FIFO queues of pending read-side and
write-side ops, plus the ``add_reader``/``add_writer`` handles of the loop, which share
the same selector.  Several ops may queue on one fd (IOCP allows that too); they complete
in order.

The traps
---------
* **Sends must finish the whole buffer.**  The proactor transports ignore the count a send
  returns.  A partial send keeps the op pending with the remainder until all is written.
* **A cancel is a request, not an event.**  ``_PendingOp.cancel()`` (the IOCP
  ``_OverlappedFuture`` pattern) cancels the future for its waiter at once, records
  ``op_cancel`` and stops waiting for readiness -- but the op stays in flight until its own
  cancelled completion is delivered by the next ``select()`` pass, as on IOCP, where a
  cancel only *asks* the kernel.  That gap is where bpo-33694 lived; the opt-in fault
  ``cancel-drops-data`` re-creates it (see ``faults``).
* **A failed send must release its buffer.**  ``send-keeps-buffer`` (opt-in, ``faults``)
  re-creates bpo-32710, where it did not.
* **Registrations are lazy, and closed fds come back.**  See ``fdtable``: a direction
  stays registered after its queue drains, and a record replaced when a new object turns up
  on a recycled fd number.
* **Don't pay for a doomed syscall.**  "Try first" has a price when it fails: a syscall
  and a ``BlockingIOError``.  In a request/response exchange the receive that follows a
  receive which emptied the socket almost always fails, so an fd remembers whether its last
  pending ``recv_into`` drained it (``drained``; that is the stream transports' receive --
  a short datagram says nothing about the queue) and the next one goes straight to pending.
  Readiness is level-triggered, so data that arrived meanwhile completes it on the very
  next ``select()``.  ``drained`` is only ever true on a live record watched for reading
  (``fdtable``), so that one attribute is the whole test.
* **The stream hot path skips the future machinery.**  A socket transport reads through
  one persistent ``StreamReceive`` (``stream_receiver``; see ``stream_receive``): no
  future, no done callback, no ``Handle`` per chunk -- the op object is re-armed per
  receive and queues the transport's persistent handle when it ends.  ``select()`` polls
  epoll directly, maps fds through our own table (``EpollSelector.select`` would build a
  ``(key, events)`` list per pass) and completes a ``StreamReceive`` at the head of a
  queue on a plain ``EPOLLIN`` inline; everything else goes through ``_dispatch`` (and
  other selectors through ``selectors``).  ``try_send`` (a socket transport's idle
  ``write()``) returns None instead of an already-finished future when all bytes went out
  inline; pipes keep ``recv_into_then`` (a persistent handle, but a future per receive).
  All of them record exactly what ``send``/``recv_into`` record.
* **Internal fds are not recorded.**  The loop's self-pipe reader uses ``recv_unrecorded``.
* **Pipes are not sockets.**  Pipe transports hand us file objects: those use
  ``os.read``/``os.readv``/``os.write`` and record ``KIND_READ_PIPE``/``KIND_WRITE_PIPE``.
  A write pipe learns that its reader went away from readability of its write end
  (``wait_pipe_closed``).
"""
from __future__ import annotations

import asyncio
import errno
import math
import os
import select as _select_mod
import selectors
import socket
from typing import Any, Iterable, Optional

from ..monitor.events import (
    FLAG_DISCARDED, KIND_ACCEPT, KIND_CONNECT, KIND_READ_PIPE, KIND_RECV, KIND_RECV_INTO,
    KIND_RECVFROM, KIND_RECVFROM_INTO, KIND_SEND, KIND_SENDFILE, KIND_SENDTO, KIND_WAIT,
    KIND_WRITE_PIPE, OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED, RECEIVE_KINDS,
)
from .common import CancelRequestFuture
from .faults import FaultEmulationMixin
from .fdtable import _READ, _WRITE, FdTableMixin, FdWaiters, _fd_or_minus_one, _fileno_or_none
from .stream_receive import StreamReceive
_socket = socket.socket
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_NO_EVENTS: tuple = ()
_EPOLLIN = getattr(_select_mod, "EPOLLIN", 0)
_NOT_EPOLLIN = ~_EPOLLIN      # what selectors maps to EVENT_WRITE
_NOT_EPOLLOUT = ~getattr(_select_mod, "EPOLLOUT", 0)    # ... and to EVENT_READ


class _PendingOp(CancelRequestFuture):
    """A pending op *is* its future: the backend's per-op state lives in these slots.

    ``cancel()`` is a request to the backend (see the module docstring); the future itself
    is cancelled at once, the op ends on the next ``select()`` pass.
    """

    __slots__ = ("_lm_kind", "_lm_obj", "_lm_fd", "_lm_buf", "_lm_n",
                 "_lm_arg", "_lm_done", "_lm_rec", "_lm_cont")   # + _lm_backend (base class)


class SelectorProactor(FaultEmulationMixin, FdTableMixin):
    """A completion-style proactor emulated with ``selectors`` (see the module docstring)."""

    backend_name = "selector"

    def __init__(self, monitor: Any = None, faults: Iterable[str] = (),
                 selector: Optional[selectors.BaseSelector] = None) -> None:
        self.monitor = monitor
        self._init_faults(faults)
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        self._epoll_poll = (self._selector._selector.poll
                            if type(self._selector) is getattr(selectors, "EpollSelector", None)
                            else None)
        self._fds: dict[int, FdWaiters] = {}
        self._cancelled: list[_PendingOp] = []     # cancel requested; completion due next select()
        self._loop: Any = None
        self._closed = False

    def __repr__(self) -> str:
        return (f"<SelectorProactor fds={len(self._fds)} closed={self._closed} "
                f"instrumented={self.monitor is not None}>")

    def set_loop(self, loop: Any) -> None:
        self._loop = loop

    # ------------------------------------------------------------------ receives
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
                              else mon.op_start_pinned(KIND_RECV_INTO, st.fd, n, n))
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

    # ------------------------------------------------------------------ sends
    def send(self, conn: Any, buf: Any, flags: int = 0) -> asyncio.Future:
        """Send *all* of ``buf``; the result is the byte count."""
        is_sock = isinstance(conn, _socket)
        kind = KIND_SEND if is_sock else KIND_WRITE_PIPE
        if type(buf) is not bytes and type(buf) is not bytearray:
            buf = memoryview(buf).cast("B")     # count bytes, not items of a typed view
        total = len(buf)
        try:
            n = conn.send(buf, flags) if is_sock else os.write(conn.fileno(), buf)
        except _WOULD_BLOCK:
            n = 0
        except Exception as exc:
            return self._send_failed_inline(kind, conn, buf, total, exc)
        if n >= total:
            mon = self.monitor
            if mon is not None:
                mon.op_inline(kind, conn.fileno(), total, n)
            fut = self._loop.create_future()
            fut.set_result(n)
            return fut
        rest = memoryview(buf)[n:] if n else buf
        op = self._pend(kind, conn, rest, total, flags, True, self.monitor)
        op._lm_done = n
        return op

    def try_send(self, sock: _socket, data: bytes) -> Optional[asyncio.Future]:
        """``send`` for a socket transport's idle ``write()``: None when all of ``data`` went
        out inline (recorded as such), else the op's future (pending, or failed).

        Saves the already-finished future (and its done callback) on the common path.
        """
        try:
            n = sock.send(data)
        except _WOULD_BLOCK:
            n = 0
        except Exception as exc:
            return self._send_failed_inline(KIND_SEND, sock, data, len(data), exc)
        total = len(data)
        if n == total:
            if self.monitor is not None:
                self.monitor.op_inline(KIND_SEND, sock.fileno(), total, n)
            return None
        op = self._pend(KIND_SEND, sock, memoryview(data)[n:] if n else data, total, 0, True,
                        self.monitor)
        op._lm_done = n
        return op

    def sendto(self, conn: _socket, buf: Any, flags: int = 0, addr: Any = None) -> asyncio.Future:
        total = len(buf)
        try:
            n = conn.sendto(buf, flags, addr) if addr is not None else conn.send(buf, flags)
        except _WOULD_BLOCK:
            op = self._pend(KIND_SENDTO, conn, buf, total, flags, True, self.monitor)
            op._lm_arg = addr
            return op
        except Exception as exc:
            return self._send_failed_inline(KIND_SENDTO, conn, buf, total, exc)
        return self._done_inline(KIND_SENDTO, conn, total, n, n)

    def sendfile(self, sock: _socket, file: Any, offset: int, count: int) -> asyncio.Future:
        """Send ``count`` bytes of ``file`` from ``offset`` with ``os.sendfile``, all of them."""
        in_fd = file.fileno()
        sent = 0
        try:
            while sent < count:
                n = os.sendfile(sock.fileno(), in_fd, offset + sent, count - sent)
                if n == 0:
                    break  # end of file
                sent += n
        except _WOULD_BLOCK:
            op = self._pend(KIND_SENDFILE, sock, None, count, 0, True, self.monitor)
            op._lm_arg = (in_fd, offset)
            op._lm_done = sent
            return op
        except OSError as exc:
            if sent == 0 and exc.errno in (errno.ENOTSOCK, errno.EINVAL, errno.ENOSYS,
                                           errno.EOPNOTSUPP):
                exc = asyncio.SendfileNotAvailableError(f"os.sendfile call failed: {exc}")
            return self._failed_inline(KIND_SENDFILE, sock, count, exc)
        return self._done_inline(KIND_SENDFILE, sock, count, sent, sent)

    # ------------------------------------------------------------------ connections
    def accept(self, listener: _socket) -> asyncio.Future:
        try:
            conn, addr = listener.accept()
        except _WOULD_BLOCK:
            return self._pend(KIND_ACCEPT, listener, None, 0, 0, False, self.monitor)
        except Exception as exc:
            return self._failed_inline(KIND_ACCEPT, listener, 0, exc)
        conn.setblocking(False)
        return self._done_inline(KIND_ACCEPT, listener, 0, 0, (conn, addr))

    def connect(self, conn: _socket, address: Any) -> asyncio.Future:
        """Non-blocking connect; completes (result None) when SO_ERROR says so."""
        try:
            conn.connect(address)
        except _WOULD_BLOCK:
            op = self._pend(KIND_CONNECT, conn, None, 0, 0, True, self.monitor)
            op._lm_arg = address
            return op
        except Exception as exc:
            return self._failed_inline(KIND_CONNECT, conn, 0, exc)
        return self._done_inline(KIND_CONNECT, conn, 0, 0, None)

    def wait_pipe_closed(self, pipe: Any) -> asyncio.Future:
        """Completes with ``b''`` when the write end ``pipe`` sees its reader go away.

        The proactor write-pipe transport learns of a closed reader from a pending read; on
        POSIX the write end of a pipe reports readiness (EPOLLERR/HUP) when the reader closes.
        """
        return self._pend(KIND_WAIT, pipe, None, 0, 0, False, self.monitor)

    def _stop_serving(self, obj: Any) -> None:
        """A listening socket is about to be closed: cancel its ops and forget its fd now."""
        fd = _fileno_or_none(obj)
        st = self._fds.get(fd) if fd is not None else None
        if st is None or st.obj is not obj:
            return
        for op in list(st.readers) + list(st.writers):
            op.cancel()
        self._forget(st)

    # ------------------------------------------------------------------ the completion pass
    def select(self, timeout: Optional[float] = None) -> tuple:
        """Wait for readiness, run the syscalls of ready ops, complete their futures."""
        if self._cancelled:
            timeout = 0
        poll = self._epoll_poll
        if poll is not None:
            # EpollSelector.select() without its (key, events) list: raw (fd, epoll mask)
            if timeout is None:
                timeout = -1
            elif timeout <= 0:
                timeout = 0
            else:
                timeout = math.ceil(timeout * 1e3) * 1e-3   # as selectors: no busy wait
            try:
                ready = poll(timeout, len(self._fds) or 1)
            except InterruptedError:
                ready = ()
        else:
            ready = self._selector.select(timeout)
        if self._cancelled:
            self._finish_cancelled()
        add_callback = self._loop._add_callback
        fds = self._fds
        if poll is None:
            for key, events in ready:
                self._dispatch(key.data, events, add_callback)
            return _NO_EVENTS
        ready_queue = self._loop._ready
        for fd, ev in ready:
            st = fds.get(fd)
            if st is None:
                continue
            if ev == _EPOLLIN:
                readers = st.readers
                if readers and st.reader_handle is None:
                    op = readers[0]
                    if type(op) is StreamReceive:
                        # the hot path: a stream transport's receive, _run_readers' work inline
                        try:
                            n = op._lm_obj.recv_into(op._buffer)
                        except _WOULD_BLOCK:
                            st.drained = False      # readiness lied: try inline next time
                            continue
                        except BaseException as exc:
                            readers.popleft()
                            self._end_failed(op, exc)
                            if readers:
                                self._run_readers(st)
                            continue
                        readers.popleft()
                        op._lm_backend = None
                        op.nbytes = n
                        st.drained = 0 < n < op._lm_n
                        ready_queue.append(op._lm_cont)
                        if op._lm_rec is not None:
                            self.monitor.op_end(op._lm_rec, OUTCOME_COMPLETED, n)
                        if readers:
                            self._run_readers(st)
                        continue
            # selectors' translation of the epoll mask, limited to what we watch
            events = (((_WRITE if ev & _NOT_EPOLLIN else 0)
                       | (_READ if ev & _NOT_EPOLLOUT else 0)) & st.mask)
            if events:
                self._dispatch(st, events, add_callback)
        return _NO_EVENTS

    def _dispatch(self, st: FdWaiters, events: int, add_callback: Any) -> None:
        """Readiness of one fd: run its ops' syscalls, queue the loop's reader/writer."""
        want = st.mask
        if events & _READ:
            handle = st.reader_handle
            if st.readers:
                self._run_readers(st)
            elif handle is None:
                want &= ~_READ      # readiness with nobody waiting: stop watching
            if handle is not None:
                if handle._cancelled:
                    st.reader_handle = None
                    if not st.readers:
                        want &= ~_READ
                else:
                    add_callback(handle)
        if events & _WRITE:
            handle = st.writer_handle
            if st.writers:
                self._run_writers(st)
            elif handle is None:
                want &= ~_WRITE
            if handle is not None:
                if handle._cancelled:
                    st.writer_handle = None
                    if not st.writers:
                        want &= ~_WRITE
                else:
                    add_callback(handle)
        if want != st.mask:
            self._set_mask(st, want)

    def _run_readers(self, st: FdWaiters) -> None:
        q = st.readers
        while q:
            op = q[0]
            kind = op._lm_kind
            obj = op._lm_obj
            try:
                if kind == KIND_RECV_INTO:
                    res = nbytes = obj.recv_into(op._lm_buf, 0, op._lm_arg)
                    st.drained = 0 < nbytes < op._lm_n
                elif kind == KIND_RECV:
                    res = obj.recv(op._lm_n, op._lm_arg)
                    nbytes = len(res)
                elif kind == KIND_READ_PIPE:
                    if op._lm_buf is None:
                        res = os.read(st.fd, op._lm_n)
                        nbytes = len(res)
                    else:
                        res = nbytes = os.readv(st.fd, (op._lm_buf,))
                elif kind == KIND_ACCEPT:
                    conn, addr = obj.accept()
                    conn.setblocking(False)
                    res = (conn, addr)
                    nbytes = 0
                elif kind == KIND_RECVFROM:
                    res = obj.recvfrom(op._lm_n, op._lm_arg)
                    nbytes = len(res[0])
                elif kind == KIND_RECVFROM_INTO:
                    res = obj.recvfrom_into(op._lm_buf, op._lm_n, op._lm_arg)
                    nbytes = res[0]
                else:  # KIND_WAIT: the write end of a pipe became readable: its reader left
                    res = b""
                    nbytes = 0
            except _WOULD_BLOCK:
                st.drained = False      # readiness lied (or another reader won): try inline next
                return
            except BaseException as exc:
                q.popleft()
                self._end_failed(op, exc)
                continue
            q.popleft()
            op._lm_backend = None
            op._lm_buf = None
            op.set_result(res)
            if op._lm_cont is not None:
                self._loop._ready.append(op._lm_cont)
            rec = op._lm_rec
            if rec is not None:
                self.monitor.op_end(rec, OUTCOME_COMPLETED, nbytes)

    def _run_writers(self, st: FdWaiters) -> None:
        q = st.writers
        while q:
            op = q[0]
            kind = op._lm_kind
            obj = op._lm_obj
            try:
                if kind == KIND_SEND or kind == KIND_WRITE_PIPE:
                    buf = op._lm_buf
                    n = obj.send(buf, op._lm_arg) if kind == KIND_SEND else os.write(st.fd, buf)
                    op._lm_done += n
                    if n < len(buf):
                        op._lm_buf = memoryview(buf)[n:]
                        return              # the socket buffer is full again
                    res = op._lm_done
                elif kind == KIND_SENDTO:
                    addr = op._lm_arg
                    res = obj.sendto(op._lm_buf, addr) if addr is not None else obj.send(op._lm_buf)
                    op._lm_done = res
                elif kind == KIND_CONNECT:
                    err = obj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"Connect call failed {op._lm_arg}")
                    res = None
                else:  # KIND_SENDFILE
                    in_fd, offset = op._lm_arg
                    while op._lm_done < op._lm_n:
                        n = os.sendfile(st.fd, in_fd, offset + op._lm_done, op._lm_n - op._lm_done)
                        if n == 0:
                            break
                        op._lm_done += n
                    res = op._lm_done
            except _WOULD_BLOCK:
                return
            except BaseException as exc:
                q.popleft()
                self._end_failed(op, exc)
                continue
            q.popleft()
            op._lm_backend = None
            op._lm_buf = None
            op.set_result(res)
            rec = op._lm_rec
            if rec is not None:
                self.monitor.op_end(rec, OUTCOME_COMPLETED, op._lm_done)

    # ------------------------------------------------------------------ op bookkeeping
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
        elif st.obj is not obj:
            if st.obj is None:
                st.obj = obj            # made by add_reader(fd): the ops' object joins it
            elif _fileno_or_none(st.obj) != fd:
                st = self._replace_stale(st, obj)
        return st

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
            r._lm_rec = mon.op_start_pinned(KIND_RECV_INTO, st.fd, r._lm_n, r._lm_n)
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

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Cancel every op, end them all in the monitor, release leaked buffers, close."""
        if self._closed:
            return
        self._closed = True
        for st in list(self._fds.values()):
            st.drained = False          # no receive goes straight to pending any more
            for op in list(st.readers) + list(st.writers):
                op._lm_backend = None
                op._lm_buf = None
                op.cancel()
            st.readers.clear()
            st.writers.clear()
        for op in self._cancelled:
            op._lm_buf = None
        self._cancelled = []
        self._fds.clear()
        self._release_leaks()
        if self.monitor is not None:
            self.monitor.drain_at_close()
        self._selector.close()
