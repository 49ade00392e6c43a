"""The selector-emulated backend's write-side submissions: sends, sendto, sendfile, connect.

As for receives (``selector_receive``), every method **tries the syscall first**; an op that
completes in its submission call is one ``Monitor.op_inline`` event and an already-finished
future, and only what would block becomes a pending op (``selector_ops._pend``) in its fd's
writer queue, which the completion pass (``selector_completion``) drives to its end.

The traps:

* **Sends must finish the whole buffer.**  The proactor transports ignore the count a send
  returns.  A partial send becomes a pending op holding the unsent rest (pinned in the
  monitor), completed by the completion pass, which keeps writing until all is written;
  its result is the whole count.
* **Count bytes, not items.**  A typed ``memoryview`` (say of ``array('i')``) has
  ``len()`` in items; ``send`` casts such a buffer to bytes first.
* **A failed send must release its buffer.**  ``send-keeps-buffer`` (opt-in, ``faults``)
  re-creates bpo-32710, where it did not: every failed submission goes through
  ``_send_failed_inline``.
* **The idle write needs no future.**  ``try_send`` (a socket transport's ``write()`` with
  nothing queued) returns None when all bytes went out inline -- recorded exactly as
  ``send`` records it -- saving the finished future and its done callback.
* **``sendfile`` that cannot work must say so in asyncio's words.**  When ``os.sendfile``
  refuses the pair of fds before sending anything, the error becomes
  ``SendfileNotAvailableError``, so ``loop.sock_sendfile`` falls back to plain sends.
* **A non-blocking connect completes by writability**, with ``SO_ERROR`` saying how; once
  connected, the socket's peer is shown beside its fd's ops (``selector_ops._note_peer_of``).
"""
from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any, Optional

from ..monitor.events import KIND_CONNECT, KIND_SEND, KIND_SENDFILE, KIND_SENDTO, KIND_WRITE_PIPE
from .selector_ops import _WOULD_BLOCK

_socket = socket.socket


class SendSubmitMixin:
    """The write-side op methods of ``SelectorProactor`` (see the module docstring)."""

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
        send_whole = self._send_whole
        try:
            # instrumented: the send and its record in one call (Monitor.send_whole)
            n = sock.send(data) if send_whole is None else send_whole(sock, data)
        except _WOULD_BLOCK:
            n = 0
        except Exception as exc:
            return self._send_failed_inline(KIND_SEND, sock, data, len(data), exc)
        total = len(data)
        if n == total:
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
        if self.monitor is not None:
            self._note_peer_of(conn.fileno(), conn)     # its fd's record may predate the connect
        return self._done_inline(KIND_CONNECT, conn, 0, 0, None)
