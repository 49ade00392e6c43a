"""The io_uring proactor: real overlapped operations on Linux (>= 5.6), in pure Python.

How io_uring works
------------------
io_uring is a pair of ring buffers shared between the process and the kernel.  We write a
*submission queue entry* (SQE, 64 bytes: an opcode, an fd, a buffer address and length, and
a 64-bit ``user_data`` of our choosing) into the submission ring, bump its tail, and call
``io_uring_enter``.  The kernel takes the entry, starts the operation, and when it is done --
now, in a millisecond, or in an hour -- writes a *completion queue entry* (CQE: the same
``user_data``, a result that is a byte count or ``-errno``, and flags) into the completion
ring.  That is exactly the model ``asyncio.proactor_events`` was written for (Windows IOCP):
an op is handed to the OS whole and finishes later.  So here every receive, accept and
connect is an SQE, and its future completes when its CQE arrives.  Socket sends are the
one shortcut: a send the socket buffer can take at once completes in its submission call
(as ``WSASend`` often does on IOCP, where ``IocpProactor`` then completes the future on the
spot); only what would block becomes an ``IORING_OP_SEND``.  That is ~25 % more echo round
trips here; ``IoUringProactor(inline_sends=False)`` puts every send on the ring.

We speak to the kernel with three raw syscalls through ``ctypes`` (``io_uring_setup`` 425,
``io_uring_enter`` 426; the numbers are the same on x86_64 and aarch64) and map the rings
with ``mmap``; ``struct`` writes SQEs and reads CQEs.  No liburing.  One ``io_uring_enter``
per loop iteration both submits the SQEs the callbacks of that iteration queued and waits
for at least one completion (``IORING_ENTER_GETEVENTS``), with the loop's timeout passed as
``IORING_ENTER_EXT_ARG`` (5.11+) or, on older kernels, as an ``IORING_OP_TIMEOUT`` SQE that
also fires after one completion.  ``user_data`` is the op's id: ``_inflight[user_data]`` is
the future, and the future *is* the op's state (no per-op dicts or closures).

The traps
---------
* **A cancel is only a request.**  ``future.cancel()`` cancels the future for its waiter at
  once, records ``op_cancel`` and submits ``IORING_OP_ASYNC_CANCEL`` for the op's
  ``user_data`` -- right away, not at the next iteration, because until the kernel drops the
  op it holds its own reference to the *file*: a socket closed by the program just after
  the cancel would otherwise stay open (a listener keeps listening, a peer sees no EOF).
  The op stays in ``_inflight`` until its own CQE arrives, and that CQE may say
  ``-ECANCELED`` -- or it may carry data, because the receive finished in the kernel before
  the cancel got there.  That is the bpo-33694 trap, and here it is not a fault we inject:
  it is what the kernel does.  Its future is cancelled, so the result cannot go to its
  caller; dropping it loses bytes (what pre-fix asyncio did).  So by default the late result
  -- bytes, a datagram, an accepted connection -- is *carried over* (``_CarryOver``) and
  handed to the next receive or accept on the same socket, which then completes inline:
  a cancelled ``sock_recv``/``sock_accept`` loses nothing, as asyncio promises.  The order
  of the stream depends on one more rule (that of overlapped I/O): while a cancelled
  receive or accept on an fd still waits for its CQE, a new receive/accept on that fd does
  not go to the kernel -- it would read the bytes *after* the ones the cancelled op may
  yet carry, or wait forever for a connection already accepted.  It queues (per fd, FIFO,
  a pending op in the monitor, no buffer pinned), and when the last such CQE is in the
  queued ops complete from what it carried, in order, and the rest go to the ring
  (``_unhold``).  A queued op that is cancelled just ends: the kernel never saw it.  This
  is no corner case: ``fut.cancel()`` then at once ``sock_recv`` in the same task is what
  ``asyncio.wait_for`` does on 3.12+ (it no longer runs the awaitable in a task).  The monitor
  shows the late completion (``FLAG_LATE_COMPLETION``) with its bytes, and the carried bytes
  are delivered by the next op; if nobody comes for them (the socket closes, the loop
  closes) they are reported with ``Monitor.discarded``.  The ``cancel-drops-data`` fault
  turns the carry-over off and gives the raw behaviour: ``op_end(..., FLAG_DISCARDED)``,
  the bytes counted in ``bytes_discarded`` -- real kernel completions, really dropped.
  Either way ``bytes_received == bytes_delivered + bytes_discarded`` holds.  A cancel that
  reaches an SQE we have not submitted yet rewrites it into a ``NOP`` in the ring: nothing
  starts, nothing is lost.
* **Buffers are pinned until the CQE, even after the cancel.**  The kernel writes into (or
  reads from) the op's memory at any moment until its completion is posted.  So the op keeps
  a Python reference to the buffer (a pooled ``ctypes`` buffer for receives, the caller's
  bytes for sends: ``c_char.from_buffer`` exports a writable one, which also forbids
  resizing a ``bytearray`` while the kernel reads it) until the CQE, and the monitor sees the
  pin (``op_start_pinned``) and its release (``op_end``) at those two moments.  ``close()``
  cancels everything and waits for the CQEs; if some never come it keeps those buffers
  alive forever (``_ORPHANED``) rather than let the kernel write into freed memory.
* **Sends must finish the whole buffer.**  A stream send may be short; the transports ignore
  the count, so a short completion resubmits the rest (same op, same ``user_data``, the
  buffer's address plus what is done) until all is sent, and re-pins just the remainder in
  the monitor.  An inline send that was short hands its remainder to the ring the same way.
* **O_NONBLOCK pipes may answer -EAGAIN.**  Some kernels honour a file's ``O_NONBLOCK``
  for plain reads and writes (asyncio makes pipes non-blocking) and complete them with
  ``-EAGAIN`` instead of waiting (6.x polls internally); such a completion re-arms the op as
  an ``IORING_OP_POLL_ADD`` for the right direction and resubmits the read/write when the
  poll fires.
* **Old kernels.**  ``io_uring_setup`` exists since 5.1, but RECV/SEND/READ/WRITE/... since
  5.6: setup asks ``IORING_REGISTER_PROBE`` (itself 5.6) which opcodes exist, so an old
  kernel is "unavailable" at once rather than a loop whose every op fails.
* **Readiness is someone else's job.**  ``add_reader``/``add_writer``, the write pipe's
  reader-gone wait, ``sendfile`` and anything we cannot express as an SQE (an unresolved
  host name, an address family we do not encode) run on an embedded ``SelectorProactor``,
  whose epoll fd we watch with a one-shot ``POLL_ADD`` on the ring, re-armed after the
  callbacks it woke have run (level-triggered, as a selector loop is).
* **Whose memory does the kernel write?**  Not the caller's, up to 1 MiB: ``recv_into``
  reads into a pooled buffer of ours and copies the bytes into the caller's buffer when
  the CQE arrives.  A late completion after a cancel would otherwise have scribbled into
  memory its owner got back (asyncio promises a cancelled ``sock_recv_into`` leaves the
  buffer alone), and a ``BufferedProtocol`` could not resize its buffer while a read is in
  flight.  The copy is one ``memmove`` per read; larger buffers go to the kernel directly.
* **Memory ordering.**  We read the CQ tail and the CQEs with plain loads.  On x86_64
  (TSO) that is enough; on aarch64 it relies on the ``io_uring_enter`` that precedes every
  reap to order them, which holds without SQPOLL (we never use it).
* **The completion ring can overflow.**  More ops may be in flight than the CQ has slots;
  the kernel (``IORING_FEAT_NODROP``) parks the overflow and flags it, and we flush it with
  another ``io_uring_enter(GETEVENTS)``.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
import platform
import select as _select
import socket
import struct
import time
import warnings
from collections import deque
from typing import Any, Iterable, Optional

from ..monitor.events import (
    FLAG_DISCARDED, FLAG_DRAINED_AT_CLOSE, KIND_ACCEPT, KIND_CONNECT, KIND_READ_PIPE,
    KIND_RECV, KIND_RECV_INTO, KIND_RECVFROM, KIND_RECVFROM_INTO, KIND_SEND, KIND_SENDTO,
    KIND_WRITE_PIPE,
    OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED, RECEIVE_KINDS,
)
from .base import FAULT_CANCEL_DROPS_DATA, FAULT_SEND_KEEPS_BUFFER, check_faults
from .common import CancelRequestFuture
from .selector import SelectorProactor, _fileno_or_none

# --- kernel ABI (include/uapi/linux/io_uring.h) ---------------------------------------------
_SYS_SETUP, _SYS_ENTER, _SYS_REGISTER = 425, 426, 427
_REGISTER_PROBE, _OP_SUPPORTED = 8, 1
_SETUP_CQSIZE, _SETUP_SUBMIT_ALL = 1 << 3, 1 << 7
_FEAT_SINGLE_MMAP, _FEAT_NODROP, _FEAT_EXT_ARG = 1 << 0, 1 << 1, 1 << 8
_ENTER_GETEVENTS, _ENTER_EXT_ARG = 1 << 0, 1 << 3
_SQ_CQ_OVERFLOW = 1 << 1
_OFF_SQ_RING, _OFF_CQ_RING, _OFF_SQES = 0, 0x8000000, 0x10000000
_OP_NOP, _OP_POLL_ADD, _OP_SENDMSG, _OP_RECVMSG, _OP_TIMEOUT = 0, 6, 9, 10, 11
_OP_ACCEPT, _OP_ASYNC_CANCEL, _OP_CONNECT, _OP_READ, _OP_WRITE, _OP_SEND, _OP_RECV = (
    13, 14, 16, 22, 23, 26, 27)
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")      # 64 bytes
_CQE = struct.Struct("<QiI")                 # 16 bytes
_U32 = struct.Struct("<I")
_NO_OFFSET = (1 << 64) - 1                   # -1: "the current file position" (pipes)
_POLLIN, _POLLOUT = _select.POLLIN, _select.POLLOUT
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_ACCEPT_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)

# user_data values below _FIRST_OP_ID are the backend's own SQEs
_UD_IGNORE, _UD_EPOLL, _UD_TIMEOUT, _FIRST_OP_ID = 1, 2, 3, 16
# an op's phase: waiting for its I/O, or (O_NONBLOCK pipe said EAGAIN) for a poll first, or
# not handed to the kernel yet: queued behind a cancelled op on its fd (see _CarryOver)
_PHASE_IO, _PHASE_POLL, _PHASE_QUEUED = 0, 1, 2
_CARRY_KINDS = RECEIVE_KINDS | {KIND_ACCEPT}   # the kinds whose late results are carried over
_INTO = -1               # ``_lm_arg`` of a read into the caller's own memory (a count)
_BOUNCE_MAX = 1 << 20    # recv_into up to this size reads into a pooled buffer, then copies
_POOL_PER_SIZE, _POOL_SIZES, _POOL_BYTES = 4, 16, 4 << 20   # bounded: memory first

_SQ_ENTRIES, _CQ_ENTRIES = 256, 4096
_CLOSE_WAIT_SECONDS = 2.0
_ORPHANED: list = []     # buffers of ops whose CQE never came at close: never freed
_socket = socket.socket
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_string_at = ctypes.string_at
_addressof = ctypes.addressof
_c_char = ctypes.c_char
_monotonic = time.monotonic


class IoUringUnavailable(OSError):
    """io_uring cannot be used here (old kernel, seccomp, sysctl, unsupported machine)."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class _GeteventsArg(ctypes.Structure):
    _fields_ = [("sigmask", ctypes.c_uint64), ("sigmask_sz", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("ts", ctypes.c_uint64)]


class _MsgHdr(ctypes.Structure):
    """``struct msghdr`` + its one ``iovec`` + room for the peer address (recvmsg/sendmsg)."""
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int),
                ("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t),
                ("addr", ctypes.c_char * 128)]


_ADDR_OFFSET, _ADDR_ROOM = _MsgHdr.addr.offset, 128   # (msg.addr itself reads as NUL-cut bytes)
_libc = ctypes.CDLL(None, use_errno=True)
_sys_setup = _libc["syscall"]           # [] gives a fresh function object each time
_sys_setup.restype = ctypes.c_long
_sys_register = _libc["syscall"]
_sys_register.restype = ctypes.c_long
_sys_enter = _libc["syscall"]
_sys_enter.restype = ctypes.c_long
_sys_enter.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                       ctypes.c_void_p, ctypes.c_size_t)


# --- addresses ---------------------------------------------------------------------------------
def _encode_sockaddr(family: int, address: Any) -> Optional[bytes]:
    """A ``struct sockaddr`` for a numeric address; None: let the selector path handle it."""
    try:
        if family == socket.AF_INET:
            host, port = address[0], address[1]
            return (struct.pack("<H", family) + struct.pack(">H", port)
                    + socket.inet_pton(family, host) + bytes(8))
        if family == socket.AF_INET6:
            host, port = address[0], address[1]
            flow = address[2] if len(address) > 2 else 0
            scope = address[3] if len(address) > 3 else 0
            return (struct.pack("<H", family) + struct.pack(">HI", port, flow)
                    + socket.inet_pton(family, host) + struct.pack("<I", scope))
        if family == socket.AF_UNIX:
            path = os.fsencode(address)
            if not path.startswith(b"\0"):
                path += b"\0"
            if len(path) > 108:
                return None
            return struct.pack("<H", family) + path
    except (OSError, TypeError, ValueError, IndexError, struct.error, OverflowError):
        return None
    return None


def _decode_sockaddr(raw: bytes, length: int) -> Any:
    family = struct.unpack_from("<H", raw)[0] if length >= 2 else 0
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[4:8]), struct.unpack_from(">H", raw, 2)[0]
    if family == socket.AF_INET6:
        port, flow = struct.unpack_from(">HI", raw, 2)
        return socket.inet_ntop(family, raw[8:24]), port, flow, struct.unpack_from("<I", raw, 24)[0]
    return None


def _buffer_address(buf: Any, writable: bool) -> tuple[int, Any]:
    """``(address, keepalive)`` of ``buf``'s bytes; keepalive pins them until the CQE.

    A writable buffer is exported (``c_char.from_buffer``: a bytearray cannot be resized
    while exported); ``bytes`` are immutable, their data pointer is stable; anything else
    read-only is copied first.
    """
    if type(buf) is bytes:
        p = ctypes.c_char_p(buf)
        return ctypes.cast(p, ctypes.c_void_p).value or 0, (buf, p)
    try:
        c = _c_char.from_buffer(buf)
        return _addressof(c), c
    except TypeError:
        if writable:
            raise
        data = bytes(buf)
        p = ctypes.c_char_p(data)
        return ctypes.cast(p, ctypes.c_void_p).value or 0, (data, p)


def _nbytes(buf: Any) -> int:
    t = type(buf)
    if t is bytes or t is bytearray:
        return len(buf)
    return buf.nbytes if t is memoryview else memoryview(buf).nbytes


# --- the ring ----------------------------------------------------------------------------------
class _Ring:
    """The shared memory and the two syscalls; knows nothing about ops or futures."""

    def __init__(self, sq_entries: int = _SQ_ENTRIES, cq_entries: int = _CQ_ENTRIES) -> None:
        if platform.machine() not in ("x86_64", "aarch64", "AMD64", "arm64"):
            raise IoUringUnavailable(errno.ENOSYS, f"io_uring: unsupported machine "
                                     f"{platform.machine()!r} (syscall numbers not known)")
        fd = -1
        for flags in (_SETUP_CQSIZE | _SETUP_SUBMIT_ALL, _SETUP_CQSIZE, 0):
            params = (ctypes.c_uint32 * 30)()
            params[1] = cq_entries
            params[2] = flags
            fd = _sys_setup(_SYS_SETUP, sq_entries, params)
            if fd >= 0:
                break
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise IoUringUnavailable(err, f"io_uring_setup failed: {os.strerror(err)}"
                                         " (ENOSYS: kernel < 5.1; EPERM: disabled by seccomp or"
                                         " kernel.io_uring_disabled)")
        if fd < 0:
            raise IoUringUnavailable(errno.EINVAL, "io_uring_setup rejected every flag set")
        self.fd = fd
        self.setup_flags = flags
        raw = bytes(params)
        (self.sq_entries, self.cq_entries, _, _, _, self.features) = struct.unpack_from("<6I", raw)
        sq = struct.unpack_from("<8IQ", raw, 40)
        cq = struct.unpack_from("<8IQ", raw, 80)
        if not self.features & _FEAT_NODROP:
            os.close(fd)
            raise IoUringUnavailable(errno.ENOSYS, "io_uring without IORING_FEAT_NODROP "
                                     "(kernel < 5.5): completions could be lost")
        missing = _unsupported_ops(fd)
        if missing:
            os.close(fd)
            raise IoUringUnavailable(errno.ENOSYS, f"io_uring lacks {missing} (needs Linux >= 5.6)")
        try:
            sq_size = sq[6] + self.sq_entries * 4
            cq_size = cq[5] + self.cq_entries * _CQE.size
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            if self.features & _FEAT_SINGLE_MMAP:
                self.sq_mm = self.cq_mm = mmap.mmap(fd, max(sq_size, cq_size), mmap.MAP_SHARED,
                                                    prot, offset=_OFF_SQ_RING)
            else:
                self.sq_mm = mmap.mmap(fd, sq_size, mmap.MAP_SHARED, prot, offset=_OFF_SQ_RING)
                self.cq_mm = mmap.mmap(fd, cq_size, mmap.MAP_SHARED, prot, offset=_OFF_CQ_RING)
            self.sqes = mmap.mmap(fd, self.sq_entries * _SQE.size, mmap.MAP_SHARED, prot,
                                  offset=_OFF_SQES)
        except OSError as exc:
            os.close(fd)
            raise IoUringUnavailable(exc.errno or errno.ENOMEM, f"io_uring mmap failed: {exc}")
        self.sq_head_off, self.sq_tail_off, self.sq_flags_off = sq[0], sq[1], sq[4]
        self.sq_mask = _U32.unpack_from(self.sq_mm, sq[2])[0]
        for i in range(self.sq_entries):     # identity map: SQ slot i -> SQE i
            _U32.pack_into(self.sq_mm, sq[6] + 4 * i, i)
        self.cq_head_off, self.cq_tail_off, self.cqes_off = cq[0], cq[1], cq[5]
        self.cq_mask = _U32.unpack_from(self.cq_mm, cq[2])[0]
        self.sq_tail = _U32.unpack_from(self.sq_mm, self.sq_tail_off)[0]   # ours, unbounded
        self.sq_head = self.sq_tail              # last known kernel head, unbounded
        self.cq_head = _U32.unpack_from(self.cq_mm, self.cq_head_off)[0]
        self.ext_arg = bool(self.features & _FEAT_EXT_ARG)
        self._ts = _Timespec()
        self._arg = _GeteventsArg(0, 0, 0, _addressof(self._ts))
        self._arg_addr = _addressof(self._arg)
        self._ts_addr = _addressof(self._ts)

    # submission ---------------------------------------------------------------------------
    def push(self, opcode: int, fd: int, addr: int, length: int, off: int, op_flags: int,
             user_data: int) -> int:
        """Write one SQE; returns its unbounded position (to NOP it before submission)."""
        pos = self.sq_tail
        if pos - self.sq_head >= self.sq_entries:
            self.enter(0, 0)                     # full: hand the kernel what we have
            if pos - self.sq_head >= self.sq_entries:
                raise BlockingIOError(errno.EBUSY, "io_uring submission queue is full")
        _SQE.pack_into(self.sqes, (pos & self.sq_mask) * 64, opcode, 0, 0, fd, off, addr,
                       length, op_flags, user_data, 0, 0, 0, 0, 0)
        self.sq_tail = pos + 1
        return pos

    def unsubmitted(self, pos: int) -> bool:
        return pos >= self.sq_head

    def make_nop(self, pos: int) -> None:
        self.sqes[(pos & self.sq_mask) * 64] = _OP_NOP

    def enter(self, min_complete: int, flags: int, timeout: Optional[float] = None) -> int:
        """Submit everything queued and optionally wait; returns -errno or the count."""
        to_submit = self.sq_tail - self.sq_head
        if to_submit:
            _U32.pack_into(self.sq_mm, self.sq_tail_off, self.sq_tail & 0xFFFFFFFF)
        argp, argsz = None, 0
        if timeout is not None and flags & _ENTER_GETEVENTS:
            if self.ext_arg:
                sec = int(timeout)
                self._ts.tv_sec = sec
                self._ts.tv_nsec = int((timeout - sec) * 1e9)
                flags |= _ENTER_EXT_ARG
                argp, argsz = self._arg_addr, ctypes.sizeof(_GeteventsArg)
        ret = _sys_enter(_SYS_ENTER, self.fd, to_submit, min_complete, flags, argp, argsz)
        head = _U32.unpack_from(self.sq_mm, self.sq_head_off)[0]
        self.sq_head += (head - self.sq_head) & 0xFFFFFFFF
        return ret if ret >= 0 else -ctypes.get_errno()

    def push_timeout(self, timeout: float) -> None:
        """Pre-5.11 kernels: a TIMEOUT SQE that also ends after one other completion."""
        sec = int(timeout)
        self._ts.tv_sec = sec
        self._ts.tv_nsec = int((timeout - sec) * 1e9)
        self.push(_OP_TIMEOUT, -1, self._ts_addr, 1, 1, 0, _UD_TIMEOUT)

    # completion ---------------------------------------------------------------------------
    def reap(self) -> list:
        """All CQEs the kernel has posted, as ``(user_data, res, flags)``; frees their slots."""
        mm = self.cq_mm
        tail = _U32.unpack_from(mm, self.cq_tail_off)[0]
        head = self.cq_head
        n = (tail - head) & 0xFFFFFFFF
        if not n:
            return []
        mask, base, unpack = self.cq_mask, self.cqes_off, _CQE.unpack_from
        out = [unpack(mm, base + ((head + i) & mask) * 16) for i in range(n)]
        self.cq_head = (head + n) & 0xFFFFFFFF
        _U32.pack_into(mm, self.cq_head_off, self.cq_head)
        return out

    def overflowed(self) -> bool:
        return bool(_U32.unpack_from(self.sq_mm, self.sq_flags_off)[0] & _SQ_CQ_OVERFLOW)

    def close(self) -> None:
        for mm in {id(m): m for m in (self.sqes, self.cq_mm, self.sq_mm)}.values():
            try:
                mm.close()
            except (BufferError, ValueError):
                pass
        os.close(self.fd)


_NEEDED_OPS = {"NOP": _OP_NOP, "POLL_ADD": _OP_POLL_ADD, "SENDMSG": _OP_SENDMSG,
               "RECVMSG": _OP_RECVMSG, "TIMEOUT": _OP_TIMEOUT, "ACCEPT": _OP_ACCEPT,
               "ASYNC_CANCEL": _OP_ASYNC_CANCEL, "CONNECT": _OP_CONNECT, "READ": _OP_READ,
               "WRITE": _OP_WRITE, "SEND": _OP_SEND, "RECV": _OP_RECV}


def _unsupported_ops(fd: int) -> str:
    """The opcodes we use that this kernel lacks (IORING_REGISTER_PROBE, itself 5.6+)."""
    raw = (ctypes.c_uint8 * (16 + 8 * 256))()
    if _sys_register(_SYS_REGISTER, fd, _REGISTER_PROBE, raw, 256) < 0:
        return "IORING_REGISTER_PROBE"
    ops_len = raw[1]
    missing = [name for name, op in _NEEDED_OPS.items()
               if op >= ops_len or not struct.unpack_from("<H", raw, 16 + 8 * op + 2)[0]
               & _OP_SUPPORTED]
    return ", ".join(f"IORING_OP_{m}" for m in missing)


def probe() -> Optional[str]:
    """None if io_uring works here, else the reason it does not."""
    try:
        _Ring(8, 16).close()
    except IoUringUnavailable as exc:
        return str(exc)
    return None


# --- carry-over of late completions ----------------------------------------------------------
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


# --- ops ---------------------------------------------------------------------------------------
class _RingOp(CancelRequestFuture):
    """A submitted op *is* its future; its state lives in these slots until its CQE.

    ``cancel()`` is a request to the kernel (see the module docstring): the future is
    cancelled at once, the op stays in flight -- buffer pinned -- until its completion.
    """

    __slots__ = ("_lm_id", "_lm_kind", "_lm_obj", "_lm_fd", "_lm_sqe",
                 "_lm_addr", "_lm_n", "_lm_arg", "_lm_keep", "_lm_done", "_lm_rec", "_lm_pos",
                 "_lm_phase", "_lm_nop", "_lm_then", "_lm_held")   # + _lm_backend (base class)


class IoUringProactor:
    """A completion-style proactor on io_uring (see the module docstring)."""

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
        self._pool: dict[int, list] = {}           # size -> free receive buffers
        self._pool_bytes = 0
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

    # ------------------------------------------------------------------ add_reader/add_writer
    def add_handle(self, fd: int, handle: asyncio.Handle, writer: bool) -> None:
        self._fallback.add_handle(fd, handle, writer)

    def remove_handle(self, fd: int, writer: bool) -> bool:
        return self._fallback.remove_handle(fd, writer)

    def has_handles(self, fd: int) -> bool:
        return self._fallback.has_handles(fd)

    # ------------------------------------------------------------------ submission
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

    # ------------------------------------------------------------------ the completion pass
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
            self.monitor.op_end(rec, OUTCOME_COMPLETED, nbytes)

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

    def _pool_get(self, size: int) -> Any:
        free = self._pool.get(size)
        if free:
            self._pool_bytes -= size
            return free.pop()
        return ctypes.create_string_buffer(size)

    def _unpin(self, op: _RingOp) -> None:
        """The op's CQE is in: its buffer may go (a pooled one back to the pool)."""
        keep = op._lm_keep
        op._lm_keep = None
        if isinstance(keep, ctypes.Array):
            size = len(keep)
            if self._pool_bytes + size > _POOL_BYTES:
                return
            free = self._pool.get(size)
            if free is None:
                if len(self._pool) < _POOL_SIZES:
                    self._pool[size] = [keep]
                    self._pool_bytes += size
            elif len(free) < _POOL_PER_SIZE:
                free.append(keep)
                self._pool_bytes += size

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

