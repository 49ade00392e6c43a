"""The io_uring proactor: real overlapped operations on Linux (>= 5.6), in pure Python.

How io_uring maps onto a proactor
---------------------------------
io_uring is a pair of ring buffers shared between the process and the kernel: we write a
*submission queue entry* (SQE) describing a whole operation -- receive into this buffer,
send these bytes, accept, connect -- and the kernel, when the operation is done (now, in a
millisecond, or in an hour), writes a *completion queue entry* (CQE) carrying our 64-bit
``user_data`` and a result.  That is exactly the model ``asyncio.proactor_events`` was
written for (Windows IOCP): an op is handed to the OS whole and finishes later.  So here
every receive, accept and connect is an SQE, and its future completes when its CQE
arrives; ``IoUringProactor`` is the narrow proactor interface ``BaseProactorEventLoop``
calls (``base.ProactorBackend``), each op method deciding which SQE an asyncio call becomes.

Where each part of the mechanism lives
--------------------------------------
* ``uring_ring.py`` -- the kernel interface: ``io_uring_setup``/``enter``/``register`` by
  ``ctypes``, the ``mmap``'d rings, the SQE/CQE layout, probing for old kernels.
* ``uring_memory.py`` -- the memory the kernel reads and writes: buffer addresses and
  keepalives (pinned until the CQE), the pooled receive buffers, ``msghdr``/``sockaddr``.
* ``uring_ops.py`` -- an op's life up to its CQE: ``_RingOp`` (the op *is* its future),
  submission, and the cancel that is only a request (``IORING_OP_ASYNC_CANCEL`` at once).
* ``uring_completion.py`` -- the completion pass: one ``io_uring_enter`` per loop
  iteration, each CQE completing its op inline (short sends resubmitted, EAGAIN'd pipes
  polled, cancelled ops' CQEs read for what the kernel really did).
* ``uring_carry.py`` -- the bpo-33694 trap: a cancelled receive/accept that completed
  anyway has its result carried over to the next op on that socket, and new ops on the fd
  queue behind it so the stream stays in order.
* this module -- ``IoUringProactor``: the op methods, ``close()``, and ``new_proactor()``
  (how ``loopmon.new_event_loop(backend="io_uring")`` / ``LOOPMON_BACKEND`` get one).

The choices made here
---------------------
* **Socket sends complete inline when they can.**  A send the socket buffer can take at
  once completes in its submission call (as ``WSASend`` often does on IOCP, where
  ``IocpProactor`` then completes the future on the spot); only what would block becomes an
  ``IORING_OP_SEND`` (the remainder, when the inline send was short).  That is ~25 % more
  echo round trips here; ``IoUringProactor(inline_sends=False)`` puts every send on the
  ring.  ``try_send`` is the transports' idle-``write()`` form of it (no future at all).
* **Readiness is someone else's job.**  ``add_reader``/``add_writer``, the write pipe's
  reader-gone wait, ``sendfile`` and anything we cannot express as an SQE (an unresolved
  host name, an address family we do not encode, an empty buffer, a buffer we cannot
  export) run on an embedded ``SelectorProactor`` whose epoll fd the ring polls
  (``uring_completion``).  Such ops are recorded by the fallback, on the same monitor.
* **Every receive and accept method first asks the carry-over** (one dict truth test when
  nothing is carried): a result carried over from a cancelled op completes the new op
  inline.
* **``_stop_serving`` cancels now, in the kernel too**: a listening socket about to be
  closed must not keep an accept in flight that holds the file open.
* **``close()`` cancels everything and waits for the CQEs** (up to 2 s) so every buffer
  is unpinned only once the kernel is done with it; a CQE that never comes leaves its
  buffer alive for good (``uring_memory._ORPHANED``) with a ``RuntimeWarning``.  Ops ended
  by the close say so (``FLAG_DRAINED_AT_CLOSE``), carried results nobody took are reported
  discarded, then the fallback's close drains the monitor.

Trap: whoever adds an op method must route a receive/accept through ``_carried`` first and
``_submit`` second, or a cancelled op's late bytes overtake it (see ``uring_carry``).
"""
from __future__ import annotations

import asyncio
import ctypes
import socket
import time
import warnings
from collections import deque
from typing import Any, Iterable, Optional

from ..monitor.events import (
    KIND_ACCEPT, KIND_CONNECT, KIND_READ_PIPE, KIND_RECV, KIND_RECV_INTO, KIND_RECVFROM,
    KIND_RECVFROM_INTO, KIND_SEND, KIND_SENDTO, KIND_WRITE_PIPE,
)
from .base import FAULT_CANCEL_DROPS_DATA, FAULT_SEND_KEEPS_BUFFER, check_faults
from .selector import SelectorProactor, _fileno_or_none
from .uring_carry import CarryOverMixin, _CarryOver
from .uring_completion import CompletionMixin
from .uring_memory import (
    _BOUNCE_MAX, _INTO, _ORPHANED, ReceiveBufferPoolMixin, _buffer_address, _encode_sockaddr,
    _nbytes,
)
from .uring_ops import SubmissionMixin, _RingOp
from .uring_ring import (
    _ENTER_GETEVENTS, _FIRST_OP_ID, _NO_OFFSET, _OP_ACCEPT, _OP_CONNECT, _OP_READ,
    _OP_RECV, _OP_RECVMSG, _OP_SEND, _OP_SENDMSG, _OP_WRITE, IoUringUnavailable, _Ring, probe,
)

__all__ = ["IoUringProactor", "IoUringUnavailable", "new_proactor", "probe"]

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_ACCEPT_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_CLOSE_WAIT_SECONDS = 2.0
_socket = socket.socket
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_addressof = ctypes.addressof
_monotonic = time.monotonic


class IoUringProactor(SubmissionMixin, CompletionMixin, CarryOverMixin, ReceiveBufferPoolMixin):
    """A completion-style proactor on io_uring (see the module docstrings of its parts)."""

    backend_name = "io_uring"

    def __init__(self, monitor: Any = None, faults: Iterable[str] = (),
                 use_timeout_sqe: bool = False, inline_sends: bool = True) -> None:
        self.monitor = monitor
        self.faults = check_faults(faults)
        self._keep_failed_send_buffers = FAULT_SEND_KEEPS_BUFFER in self.faults
        # cancel-drops-data: a late receive completion is dropped (raw io_uring, bpo-33694)
        # instead of being carried over to the next receive
        self._drop_cancelled_data = FAULT_CANCEL_DROPS_DATA in self.faults
        self._carry = _CarryOver()
        # fd -> how many cancelled receives/accepts on it still wait for their CQE; while
        # there are any, new receives/accepts on that fd queue in _queued[fd] (FIFO)
        self._held: dict[int, int] = {}
        self._queued: dict[int, deque] = {}
        # a socket send the socket buffer can take at once completes in its submission call
        # (as WSASend often does on IOCP); only what would block becomes an SQE
        self._inline_sends = inline_sends
        self._init_receive_pool()
        self._ring = _Ring()
        # pre-5.11 kernels have no EXT_ARG: the loop's timeout becomes a TIMEOUT SQE
        self._timeout_sqe = use_timeout_sqe or not self._ring.ext_arg
        # readiness (add_reader/add_writer), sendfile, write-pipe waits and unencodable
        # addresses run on a selector proactor whose epoll fd the ring polls
        self._fallback = SelectorProactor(monitor=monitor, faults=faults)
        self._epoll_fd = self._fallback._selector.fileno()
        self._epoll_armed = False
        self._inflight: dict[int, _RingOp] = {}
        self._closing_ids: set = set()             # ops cancelled by close()
        self._next_id = _FIRST_OP_ID
        self._leaked: list = self._fallback._leaked   # send-keeps-buffer: one list for both
        self._loop: Any = None
        self._closed = False

    def __repr__(self) -> str:
        return (f"<IoUringProactor inflight={len(self._inflight)} closed={self._closed} "
                f"instrumented={self.monitor is not None}>")

    def set_loop(self, loop: Any) -> None:
        self._loop = loop
        self._fallback.set_loop(loop)

    # ------------------------------------------------------------------ receives
    def recv(self, conn: Any, nbytes: int, flags: int = 0) -> asyncio.Future:
        if self._carry.by_fd and (q := self._carried(conn, self.monitor)) is not None:
            return self._from_carry(KIND_RECV, conn, q, nbytes, None)
        if nbytes <= 0:
            return self._fallback.recv(conn, nbytes, flags)
        buf = self._pool_get(nbytes)
        if isinstance(conn, _socket):
            return self._submit(KIND_RECV, conn, _OP_RECV, _addressof(buf), nbytes, 0, flags,
                                buf, self.monitor)
        return self._submit(KIND_READ_PIPE, conn, _OP_READ, _addressof(buf), nbytes,
                            _NO_OFFSET, 0, buf, self.monitor)

    def recv_unrecorded(self, conn: _socket, nbytes: int) -> asyncio.Future:
        """``recv`` for the loop's own fds (the self-pipe): never shows in the monitor."""
        if self._carry.by_fd and (q := self._carried(conn, None)) is not None:
            fut = self._loop.create_future()
            fut.set_result(q.popleft())
            self._carry.done_with(conn, q)
            return fut
        buf = self._pool_get(nbytes)
        return self._submit(KIND_RECV, conn, _OP_RECV, _addressof(buf), nbytes, 0, 0, buf, None)

    def recv_into(self, conn: Any, buf: Any, flags: int = 0) -> asyncio.Future:
        return self.recv_into_then(conn, buf, None, flags)

    def recv_into_then(self, conn: Any, buf: Any, then: Optional[asyncio.Handle],
                       flags: int = 0) -> asyncio.Future:
        """``recv_into`` whose completion (or failure, never a cancel) also queues ``then``.

        The transports' read loop (``transports._ContinuedReadMixin``) passes one persistent
        handle instead of adding a done callback to every receive future.
        """
        if self._carry.by_fd and (q := self._carried(conn, self.monitor)) is not None:
            fut = self._from_carry(KIND_RECV_INTO, conn, q, _nbytes(buf), buf)
            if then is not None:
                self._loop._add_callback(then)
            return fut
        try:
            size = _nbytes(buf)
            if size > _BOUNCE_MAX:                  # the kernel writes the caller's memory
                addr, keep = _buffer_address(buf, True)
                dest = _INTO
            elif size:                              # a pooled buffer, copied on completion
                memoryview(buf).cast("B")           # (writable, contiguous: fail now)
                if memoryview(buf).readonly:
                    raise TypeError("recv_into needs a writable buffer")
                keep = self._pool_get(size)
                addr, dest = _addressof(keep), buf
        except (TypeError, ValueError, BufferError):
            return self._fallback.recv_into_then(conn, buf, then, flags)
        if not size:
            return self._fallback.recv_into_then(conn, buf, then, flags)
        if isinstance(conn, _socket):
            op = self._submit(KIND_RECV_INTO, conn, _OP_RECV, addr, size, 0, flags, keep,
                              self.monitor, dest)
        else:
            op = self._submit(KIND_READ_PIPE, conn, _OP_READ, addr, size, _NO_OFFSET, 0, keep,
                              self.monitor, dest)
        if then is not None:
            if type(op) is _RingOp:
                op._lm_then = then
            else:                               # failed at submission
                self._loop._add_callback(then)
        return op

    def recvfrom(self, conn: _socket, nbytes: int, flags: int = 0) -> asyncio.Future:
        if self._carry.by_fd and (q := self._carried(conn, self.monitor)) is not None:
            return self._from_carry(KIND_RECVFROM, conn, q, nbytes, None)
        if conn.family not in (socket.AF_INET, socket.AF_INET6) or nbytes <= 0:
            return self._fallback.recvfrom(conn, nbytes, flags)
        buf = self._pool_get(nbytes)
        return self._submit_msg(KIND_RECVFROM, conn, _OP_RECVMSG, _addressof(buf), nbytes,
                                flags, buf, None)

    def recvfrom_into(self, conn: _socket, buf: Any, nbytes: int = 0,
                      flags: int = 0) -> asyncio.Future:
        size = _nbytes(buf)
        nbytes = min(nbytes or size, size)
        if self._carry.by_fd and (q := self._carried(conn, self.monitor)) is not None:
            return self._from_carry(KIND_RECVFROM_INTO, conn, q, nbytes, buf)
        if conn.family not in (socket.AF_INET, socket.AF_INET6) or nbytes <= 0:
            return self._fallback.recvfrom_into(conn, buf, nbytes, flags)
        try:
            addr, keep = _buffer_address(buf, True)
        except (TypeError, ValueError, BufferError):
            return self._fallback.recvfrom_into(conn, buf, nbytes, flags)
        return self._submit_msg(KIND_RECVFROM_INTO, conn, _OP_RECVMSG, addr, nbytes, flags,
                                keep, None)

    # ------------------------------------------------------------------ sends
    def send(self, conn: Any, buf: Any, flags: int = 0) -> asyncio.Future:
        """Send *all* of ``buf`` (short completions resubmit the rest); result: the count."""
        size = _nbytes(buf)
        if not size:
            return self._fallback.send(conn, buf, flags)
        done = 0
        is_sock = isinstance(conn, _socket)
        if is_sock and self._inline_sends:
            try:
                done = conn.send(buf, flags)
            except _WOULD_BLOCK:
                done = 0
            except Exception as exc:
                return self._fallback._send_failed_inline(KIND_SEND, conn, buf, size, exc)
            if done >= size:                        # the socket buffer took it all
                mon = self.monitor
                if mon is not None:
                    mon.op_inline(KIND_SEND, conn.fileno(), size, done)
                fut = self._loop.create_future()
                fut.set_result(done)
                return fut
        try:
            addr, keep = _buffer_address(buf, False)
        except (TypeError, ValueError, BufferError):
            if done:
                buf = memoryview(buf).cast("B")[done:]
                addr, keep = _buffer_address(bytes(buf), False)
                size -= done
                done = 0
            else:
                return self._fallback.send(conn, buf, flags)
        if is_sock:
            return self._submit(KIND_SEND, conn, _OP_SEND, addr, size, 0,
                                flags | _MSG_NOSIGNAL, keep, self.monitor, done=done)
        return self._submit(KIND_WRITE_PIPE, conn, _OP_WRITE, addr, size, _NO_OFFSET, 0, keep,
                            self.monitor)

    def try_send(self, sock: _socket, data: bytes) -> Optional[asyncio.Future]:
        """``send`` for a socket transport's idle ``write()``: None when all of ``data`` went
        out inline (recorded as such), else the op's future (on the ring, or failed)."""
        total = len(data)
        if not self._inline_sends:
            return self.send(sock, data)
        try:
            n = sock.send(data)
        except _WOULD_BLOCK:
            n = 0
        except Exception as exc:
            return self._fallback._send_failed_inline(KIND_SEND, sock, data, total, exc)
        if n >= total:
            mon = self.monitor
            if mon is not None:
                mon.op_inline(KIND_SEND, sock.fileno(), total, n)
            return None
        addr, keep = _buffer_address(data, False)
        return self._submit(KIND_SEND, sock, _OP_SEND, addr, total, 0, _MSG_NOSIGNAL, keep,
                            self.monitor, done=n)

    def sendto(self, conn: _socket, buf: Any, flags: int = 0, addr: Any = None) -> asyncio.Future:
        raw = _encode_sockaddr(conn.family, addr) if addr is not None else b""
        size = _nbytes(buf)
        if raw is None or conn.family not in (socket.AF_INET, socket.AF_INET6):
            return self._fallback.sendto(conn, buf, flags, addr)
        try:
            baddr, keep = _buffer_address(buf, False) if size else (0, None)
        except (TypeError, ValueError, BufferError):
            return self._fallback.sendto(conn, buf, flags, addr)
        return self._submit_msg(KIND_SENDTO, conn, _OP_SENDMSG, baddr, size,
                                flags | _MSG_NOSIGNAL, keep, raw)

    def sendfile(self, sock: _socket, file: Any, offset: int, count: int) -> asyncio.Future:
        return self._fallback.sendfile(sock, file, offset, count)

    # ------------------------------------------------------------------ connections
    def accept(self, listener: _socket) -> asyncio.Future:
        if self._carry.by_fd and (q := self._carried(listener, self.monitor)) is not None:
            return self._from_carry(KIND_ACCEPT, listener, q, 0, None)
        return self._submit(KIND_ACCEPT, listener, _OP_ACCEPT, 0, 0, 0, _ACCEPT_FLAGS, None,
                            self.monitor)

    def connect(self, conn: _socket, address: Any) -> asyncio.Future:
        raw = _encode_sockaddr(conn.family, address)
        if raw is None:
            return self._fallback.connect(conn, address)
        addr, keep = _buffer_address(raw, False)
        return self._submit(KIND_CONNECT, conn, _OP_CONNECT, addr, 0, len(raw), 0, keep,
                            self.monitor, address)

    def wait_pipe_closed(self, pipe: Any) -> asyncio.Future:
        return self._fallback.wait_pipe_closed(pipe)

    def _stop_serving(self, obj: Any) -> None:
        """A listening socket is about to be closed: cancel its ops (now, in the kernel too)."""
        fd = _fileno_or_none(obj)
        for op in list(self._queued.get(fd, ())) if fd is not None else ():
            if op._lm_obj is obj:
                op.cancel()
        for op in list(self._inflight.values()):
            if op._lm_obj is obj and not op.done():
                op.cancel()
        if fd is not None and fd in self._carry.by_fd:
            self._carry.drop(fd, self.monitor)
        self._fallback._stop_serving(obj)

    # ------------------------------------------------------------------ add_reader/add_writer
    def add_handle(self, fd: int, handle: asyncio.Handle, writer: bool) -> None:
        self._fallback.add_handle(fd, handle, writer)

    def remove_handle(self, fd: int, writer: bool) -> bool:
        return self._fallback.remove_handle(fd, writer)

    def has_handles(self, fd: int) -> bool:
        return self._fallback.has_handles(fd)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Cancel every op, wait for their CQEs (buffers stay pinned till then), close."""
        if self._closed:
            return
        self._closed = True
        for q in list(self._queued.values()):  # queued ops never reached the kernel
            for op in list(q):
                self._closing_ids.add(op._lm_id)
                op.cancel()
        for op in list(self._inflight.values()):
            if not op.done():
                op.cancel()
                self._closing_ids.add(op._lm_id)   # ended because we close: say so
        ring = self._ring
        deadline = _monotonic() + _CLOSE_WAIT_SECONDS
        while self._inflight and _monotonic() < deadline:
            ring.enter(1, _ENTER_GETEVENTS, 0.05)
            for user_data, res, _flags in ring.reap():
                if user_data >= _FIRST_OP_ID:
                    self._complete(user_data, res)
        if self._inflight:
            # the kernel may still write into these: keep them alive for the process's life
            _ORPHANED.extend(op._lm_keep for op in self._inflight.values())
            warnings.warn(f"loopmon io_uring: {len(self._inflight)} op(s) did not complete "
                          "at close; their buffers are kept alive", RuntimeWarning)
            self._inflight.clear()
        self._leaked.clear()
        self._carry.drop_all(self.monitor)      # carried results nobody came for: discarded
        ring.close()
        self._fallback.close()                  # ends whatever is left in the monitor


def new_proactor(name: str, *, instrument: bool = True, faults: Iterable[str] = (),
                 explicit: bool = True) -> Optional[Any]:
    """The proactor for backend ``name`` ("selector" gives None: the loop's default).

    ``explicit`` (asked by argument): io_uring unavailable is an ``IoUringUnavailable``
    error.  Otherwise (asked by the environment) it falls back to the selector backend with a
    ``RuntimeWarning`` that says why.
    """
    if name in ("", "selector"):
        return None
    if name != "io_uring":
        raise ValueError(f"unknown loopmon backend {name!r}; known: selector, io_uring")
    from ..monitor import Monitor
    try:
        return IoUringProactor(monitor=Monitor(backend="io_uring") if instrument else None,
                               faults=faults)
    except IoUringUnavailable as exc:
        if explicit:
            raise
        warnings.warn(f"loopmon: io_uring backend unavailable ({exc}); using the selector "
                      "backend", RuntimeWarning, stacklevel=3)
        return None

