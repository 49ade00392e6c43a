"""The io_uring kernel interface: two mmap'd rings, three raw syscalls, the SQE/CQE layout.

This module knows nothing about asyncio, ops or futures.  ``_Ring`` writes submission
entries, enters the kernel and reads completion entries; ``IoUringProactor``
(``io_uring.py``) decides what goes in them.

The mechanism
-------------
io_uring is a pair of ring buffers shared between the process and the kernel.  We write a
*submission queue entry* (SQE, 64 bytes: an opcode, an fd, a buffer address and length, an
offset, op flags and a 64-bit ``user_data`` of our choosing; layout ``_SQE``) into the
submission ring, bump its tail, and call ``io_uring_enter``.  The kernel takes the entry,
starts the operation, and when it is done -- now, in a millisecond, or in an hour -- writes
a *completion queue entry* (CQE, 16 bytes: the same ``user_data``, a result that is a byte
count or ``-errno``, and flags; layout ``_CQE``) into the completion ring.

We speak to the kernel through ``ctypes`` and libc's ``syscall()``: ``io_uring_setup``
(425), ``io_uring_enter`` (426) and ``io_uring_register`` (427); the numbers are the same on
x86_64 and aarch64, and any other machine is refused at setup.  The rings are mapped with
``mmap`` at the three fixed offsets of the ABI (SQ ring, CQ ring, SQE array -- or one map for
both rings with ``IORING_FEAT_SINGLE_MMAP``); ``struct`` writes SQEs and reads CQEs.  No
liburing.  The SQ ring's index array is filled once as the identity (slot *i* -> SQE *i*), so
an SQE's position in the ring is all we need to find it again.

``enter(min_complete, flags, timeout)`` both submits everything pushed since the last call
and, with ``IORING_ENTER_GETEVENTS``, waits for completions: with a timeout passed as
``IORING_ENTER_EXT_ARG`` (5.11+), or -- older kernels -- as an ``IORING_OP_TIMEOUT`` SQE
(``push_timeout``) whose count of 1 also ends it after one other completion.  ``reap()``
returns every posted CQE as ``(user_data, res, flags)`` and frees their slots at once.

``user_data`` values below ``_FIRST_OP_ID`` are the backend's own SQEs (the cancel requests
whose answers nobody needs, the poll on the embedded selector's epoll fd, the timeout); from
``_FIRST_OP_ID`` up they are op ids.

The traps
---------
* **Positions are unbounded integers.**  ``sq_tail`` (ours) and ``sq_head`` (the kernel's,
  caught up after every enter, modulo 2**32) only grow; ``push`` returns the position, and
  ``unsubmitted(pos)`` tells whether the kernel has taken that SQE yet.  One not yet taken
  can still be rewritten in place into a ``NOP`` (``make_nop``): that is how a cancel that
  comes before the next enter makes sure nothing starts.
* **A full submission ring** is handed to the kernel at once (``enter(0, 0)``) from
  ``push``; only if it is still full is that an error (``BlockingIOError``).
* **The completion ring can overflow.**  More ops may be in flight than the CQ has slots
  (4096).  Setup requires ``IORING_FEAT_NODROP`` (5.5): the kernel then parks the overflow and
  sets ``IORING_SQ_CQ_OVERFLOW`` (``overflowed()``), and another ``enter(GETEVENTS)`` flushes
  it into the ring.  Without NODROP completions could be lost, so such a kernel is
  "unavailable".
* **Old kernels.**  ``io_uring_setup`` exists since 5.1, but RECV/SEND/READ/WRITE/... since
  5.6: setup asks ``IORING_REGISTER_PROBE`` (itself 5.6) which opcodes exist
  (``_NEEDED_OPS``), so an old kernel is ``IoUringUnavailable`` at once rather than a loop
  whose every op fails.  Setup flags are tried newest first (``CQSIZE|SUBMIT_ALL``, then
  ``CQSIZE``, then none); only ``EINVAL`` moves on to the next set, any other errno (ENOSYS,
  EPERM from seccomp or ``kernel.io_uring_disabled``) is the answer.
* **Memory ordering.**  We read the CQ tail and the CQEs with plain loads.  On x86_64 (TSO)
  that is enough; on aarch64 it relies on the ``io_uring_enter`` that precedes every reap to
  order them, which holds without SQPOLL (we never use it).
* **ctypes function objects.**  ``_libc["syscall"]`` returns a fresh function object each
  time, so setup, register and enter each get their own with their own ``restype`` and
  ``argtypes``; ``enter``'s are fixed so the hot call converts nothing by guesswork.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import select as _select
import struct
from typing import Optional

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

# user_data values below _FIRST_OP_ID are the backend's own SQEs
_UD_IGNORE, _UD_EPOLL, _UD_TIMEOUT, _FIRST_OP_ID = 1, 2, 3, 16
_SQ_ENTRIES, _CQ_ENTRIES = 256, 4096
_addressof = ctypes.addressof


class IoUringUnavailable(OSError):
    """io_uring cannot be used here (old kernel, seccomp, sysctl, unsupported machine)."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class _GeteventsArg(ctypes.Structure):
    _fields_ = [("sigmask", ctypes.c_uint64), ("sigmask_sz", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("ts", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_sys_setup = _libc["syscall"]           # [] gives a fresh function object each time
_sys_setup.restype = ctypes.c_long
_sys_register = _libc["syscall"]
_sys_register.restype = ctypes.c_long
_sys_enter = _libc["syscall"]
_sys_enter.restype = ctypes.c_long
_sys_enter.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                       ctypes.c_void_p, ctypes.c_size_t)



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

