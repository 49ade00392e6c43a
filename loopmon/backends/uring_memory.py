"""The memory the kernel reads and writes for an io_uring op, and how long it must live.

An SQE carries raw addresses: of the bytes to send, of the buffer to receive into, of a
``struct sockaddr`` to connect to, of a ``struct msghdr`` for ``recvmsg``/``sendmsg``.  The
kernel reads or writes that memory at any moment until the op's CQE is posted -- long after
the Python call that submitted it returned, and even after the op's future was cancelled.
This module turns Python objects into such addresses and keeps the objects alive.

The mechanism
-------------
* ``_buffer_address(buf, writable)`` -> ``(address, keepalive)``.  A writable buffer is
  *exported* (``c_char.from_buffer``); ``bytes`` are immutable and their data pointer is
  stable (``c_char_p``); anything else read-only is copied first.  The op holds the
  keepalive in its ``_lm_keep`` slot until its CQE: that reference *is* the pin, and the
  monitor sees it as ``op_start_pinned`` ... ``op_end`` (or ``buffer_release``).
* ``ReceiveBufferPoolMixin``: receives read into pooled ``ctypes`` buffers of ours
  (``_pool_get``); ``_unpin`` -- called only once the kernel is done with the op (its CQE
  is in, or it never reached the kernel) -- drops the op's reference and returns a pooled
  buffer to the pool.  The pool is bounded three ways (4
  buffers per size, 16 sizes, 4 MiB in all): memory first, a miss costs one allocation.
* ``_MsgHdr``: one ``struct msghdr`` with its single ``iovec`` and 128 bytes of room for the
  peer address laid out behind it, so ``recvfrom``/``sendto`` pin one ctypes object.
* ``_encode_sockaddr``/``_decode_sockaddr``: numeric IPv4/IPv6 addresses and Unix paths to
  and from ``struct sockaddr``.  Anything else (a host name, another family, an over-long
  path) encodes to None and the op goes to the selector fallback, which resolves as the
  stdlib does.

The traps
---------
* **Whose memory does the kernel write?**  Not the caller's, up to 1 MiB (``_BOUNCE_MAX``):
  ``recv_into`` reads into a pooled buffer and copies the bytes into the caller's buffer
  when the CQE arrives.  A late completion after a cancel would otherwise have scribbled
  into memory its owner got back (asyncio promises a cancelled ``sock_recv_into`` leaves the
  buffer alone), and a ``BufferedProtocol`` could not resize its buffer while a read is in
  flight.  The copy is one ``memmove`` per read; larger buffers are exported and go to the
  kernel directly (``_INTO`` marks such an op).
* **Exports forbid resizing.**  A ``bytearray`` exported for a send cannot be resized while
  the kernel reads it (``BufferError`` in the program, not corrupted memory) -- which is
  exactly the guarantee wanted.
* **A buffer the kernel may still touch is never freed.**  ``close()`` waits for every
  op's CQE; one that never comes leaves its keepalive in ``_ORPHANED`` for the life of the
  process rather than let the kernel write into freed memory.
* **``msg.addr`` reads as NUL-cut bytes** through ctypes; the peer address is read by offset
  (``_ADDR_OFFSET``, ``_ADDR_ROOM``) with ``string_at`` instead.
"""
from __future__ import annotations

import ctypes
import os
import socket
import struct
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .uring_ops import _RingOp

_INTO = -1               # ``_lm_arg`` of a read into the caller's own memory (a count)
_BOUNCE_MAX = 1 << 20    # recv_into up to this size reads into a pooled buffer, then copies
_POOL_PER_SIZE, _POOL_SIZES, _POOL_BYTES = 4, 16, 4 << 20   # bounded: memory first
_ORPHANED: list = []     # buffers of ops whose CQE never came at close: never freed
_addressof = ctypes.addressof
_c_char = ctypes.c_char


class _MsgHdr(ctypes.Structure):
    """``struct msghdr`` + its one ``iovec`` + room for the peer address (recvmsg/sendmsg)."""
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int),
                ("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t),
                ("addr", ctypes.c_char * 128)]


_ADDR_OFFSET, _ADDR_ROOM = _MsgHdr.addr.offset, 128   # (msg.addr itself reads as NUL-cut bytes)


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



class ReceiveBufferPoolMixin:
    """Pooled receive buffers, and the unpin once an op's CQE is in (mixed into
    ``IoUringProactor``; its ``__init__`` calls ``_init_receive_pool``)."""

    def _init_receive_pool(self) -> None:
        self._pool: dict[int, list] = {}           # size -> free receive buffers
        self._pool_bytes = 0

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

