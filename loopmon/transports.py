"""Proactor transports that count the bytes they hand to protocols.

The backend counts bytes *received from the OS*; only the transport knows when those bytes
are *delivered* -- handed to ``data_received``, fed to a ``BufferedProtocol`` or passed to
``datagram_received``.  The gap between the two counters is exactly how bpo-33694-class
loss shows up, so the count must be taken at the moment of hand-over and not before:

* Stream and pipe transports deliver through ``_CountDeliveredMixin``, which counts at each
  hand-over and holds bytes that arrive while reading is paused in a backlog (so they are
  counted when, and if, they are delivered).
* The datagram transport delivers in a ``finally`` clause of ``_loop_reading``; we work out
  beforehand whether that call will deliver (the same conditions it checks) and count then.

Several fixes ride along, for bare and instrumented loops alike (a bare loop has
``loop.monitor is None`` and counts nothing):

* ``_call_connection_lost`` calls ``sock.shutdown()``, which raises ``ENOTCONN`` on POSIX
  for unconnected UDP sockets and torn-down TCP connections; see ``_ShutdownTolerantSocket``.
* The stdlib write-pipe transport learns that the reader of a write pipe went away from a
  16-byte ``recv`` on the write end, which works on a Windows named pipe but not on a POSIX
  pipe, so ``WritePipeTransport`` asks the backend for ``wait_pipe_closed`` instead.
* Socket writes that complete inline skip the done-callback hop (``_InlineWriteMixin``).
* An exception raised by ``data_received`` is a fatal error for the transport, as on the
  selector loop (the stdlib proactor lets it escape and leaves the transport open); and a
  ``BufferedProtocol`` that pauses reading gets no more ``buffer_updated`` calls until it
  resumes (the stdlib feeds it the rest of the chunk regardless).
* Datagram endpoints keep sending after a send fails at submission and keep receiving after
  an ICMP error went to ``error_received`` (the stdlib proactor stalls in both cases).
"""
from __future__ import annotations

from asyncio import proactor_events
from asyncio.protocols import BufferedProtocol
from collections import deque

_datagram_loop_reading = proactor_events._ProactorDatagramTransport._loop_reading
_datagram_loop_writing = proactor_events._ProactorDatagramTransport._loop_writing
_base_write = proactor_events._ProactorBaseWritePipeTransport.write


class _ShutdownTolerantSocket:
    """Stands in for the socket during ``_call_connection_lost``: a failing shutdown is ignored.

    The stdlib proactor transport calls ``sock.shutdown(SHUT_RDWR)`` before closing (a
    Windows cure for ``ERROR_NETNAME_DELETED``).  On POSIX that raises ``ENOTCONN`` for an
    unconnected UDP socket or a TCP connection the peer already tore down -- and the raise
    skips ``sock.close()`` and the server detach, so ``Server.wait_closed()`` would hang.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock):
        self._sock = sock

    def shutdown(self, how):
        try:
            self._sock.shutdown(how)
        except OSError:
            pass

    def fileno(self):
        return self._sock.fileno()

    def close(self):
        self._sock.close()


class _TolerantCloseMixin:
    __slots__ = ()

    def _call_connection_lost(self, exc):
        sock = self._sock
        if (not self._called_connection_lost and sock is not None
                and hasattr(sock, "shutdown")):
            self._sock = _ShutdownTolerantSocket(sock)
        super()._call_connection_lost(exc)


class _CountDeliveredMixin:
    """Hands received bytes to the protocol -- in order, never while paused -- and counts them.

    Replaces the stdlib's ``_data_received``/``resume_reading`` pair.  The stdlib keeps at most
    one paused chunk (``_pending_data_length``) and feeds a ``BufferedProtocol`` the whole
    chunk even if the protocol pauses reading half way through it.  Here a *backlog* (a deque
    of ``(data, length)``, EOF being length 0) holds whatever arrives while paused, plus the
    unfed rest of a chunk a buffered protocol paused in; ``resume_reading`` drains it, oldest
    first, before anything newer is delivered.  ``delivered`` is counted per hand-over.
    """

    __slots__ = ()
    _lm_backlog = None          # deque, created on first need

    def _data_received(self, data, length):
        backlog = self._lm_backlog
        if self._paused or backlog:
            if backlog is None:
                backlog = self._lm_backlog = deque()
            backlog.append((data, length))
            return
        self._lm_deliver(data, length)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._read_fut is None:
            self._loop.call_soon(self._loop_reading, None)
        if self._lm_backlog:
            self._loop.call_soon(self._lm_drain_backlog)

    def _lm_drain_backlog(self):
        backlog = self._lm_backlog
        while backlog and not self._paused and not self._closing:
            data, length = backlog.popleft()
            self._lm_deliver(data, length)

    def _lm_deliver(self, data, length):
        if length == 0:
            self._eof_received()
            return
        protocol = self._protocol
        mon = self._loop.monitor
        if isinstance(protocol, BufferedProtocol):
            try:
                rest = self._lm_feed_buffered(protocol, data, mon)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
            if rest is not None:            # paused half way: the rest goes first next time
                if self._lm_backlog is None:
                    self._lm_backlog = deque()
                self._lm_backlog.appendleft((rest, len(rest)))
            return
        if mon is not None:
            mon.delivered(length)
        try:
            protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # the stdlib proactor lets this escape _loop_reading and keeps the transport
            # open; asyncio's documented (selector) behaviour is a fatal transport error
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _lm_feed_buffered(self, protocol, data, mon):
        """``protocols._feed_data_to_buffered_proto`` that stops when the protocol pauses."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            buf = protocol.get_buffer(end - pos)
            n = min(len(buf), end - pos)
            if not n:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[pos:pos + n]
            pos += n
            if mon is not None:
                mon.delivered(n)
            protocol.buffer_updated(n)
            if self._paused and pos < end:
                return bytes(view[pos:])
        return None


class _InlineWriteMixin:
    """``write()`` on an idle transport submits the send at once and, when the backend
    completes it inline, is done: no future callback round trip.

    The stdlib proactor transport always waits for the send future's done callback
    (``_loop_writing(f)``), a ``call_soon`` hop per write even when the send finished inside
    its submission -- IOCP has to wait for the completion packet anyway, we do not.  Only the
    IDLE state (no send in flight, nothing buffered, not closing, no EOF written, no sendfile)
    takes the fast path, so write order and flow control are unchanged; a send that goes
    pending or fails is handed to the stdlib machinery exactly as ``_loop_writing`` would.
    """

    __slots__ = ()

    def write(self, data):
        if (self._write_fut is None and not self._buffer and not self._conn_lost
                and not self._closing and not self._eof_written and self._empty_waiter is None
                and data and isinstance(data, (bytes, bytearray, memoryview))):
            if type(data) is not bytes:
                data = bytes(data)          # the caller may reuse its buffer
            fut = self._loop._proactor.send(self._sock, data)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return                      # sent inline: still IDLE
            self._write_fut = fut
            if not fut.done():
                self._pending_write = len(data)
                fut.add_done_callback(self._loop_writing)
                self._maybe_pause_protocol()
            else:                           # failed: _loop_writing(f) reports it
                fut.add_done_callback(self._loop_writing)
            return
        _base_write(self, data)


class SocketTransport(_CountDeliveredMixin, _InlineWriteMixin, _TolerantCloseMixin,
                      proactor_events._ProactorSocketTransport):
    """``_ProactorSocketTransport`` + delivered-bytes accounting + inline writes."""


class ReadPipeTransport(_CountDeliveredMixin, _TolerantCloseMixin,
                        proactor_events._ProactorReadPipeTransport):
    """``_ProactorReadPipeTransport`` + delivered-bytes accounting."""


class DatagramTransport(_TolerantCloseMixin, proactor_events._ProactorDatagramTransport):
    """``_ProactorDatagramTransport`` + delivered-bytes accounting."""

    def _loop_writing(self, fut=None):
        _datagram_loop_writing(self, fut)
        # The stdlib stops after handing a failed send to error_received(): the datagrams
        # queued behind it would wait for the next sendto().  Each pass pops one datagram or
        # leaves a send in flight, so this ends.
        while self._write_fut is None and self._buffer and not self._conn_lost:
            _datagram_loop_writing(self, None)
        if not self._buffer:
            # 3.13.0 counts 8 header bytes per datagram in sendto() but subtracts only the
            # payload here: get_write_buffer_size() would creep up forever.  Empty is zero.
            self._buffer_size = 0

    def _loop_reading(self, fut=None):
        if fut is not None and not self._conn_lost and not self._closing:
            mon = self._loop.monitor
            if (mon is not None and fut.done() and not fut.cancelled()
                    and fut.exception() is None):
                res = fut.result()
                data = res if self._address is not None else res[0]
                if data:
                    mon.delivered(len(data))
        _datagram_loop_reading(self, fut)
        if (fut is not None and self._read_fut is None and not self._closing
                and not self._conn_lost and self._sock is not None
                and self._sock.fileno() != -1):
            # the receive failed (an ICMP error: error_received() was told) and the stdlib
            # stops reading for good; the selector loop keeps receiving -- so do we
            _datagram_loop_reading(self, None)


class WritePipeTransport(_TolerantCloseMixin, proactor_events._ProactorBaseWritePipeTransport):
    """Write pipe whose reader-closed detection works on POSIX pipes.

    Same as ``_ProactorWritePipeTransport`` except for how the pending "closed" read is made.
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._read_fut = self._loop._proactor.wait_pipe_closed(self._sock)
        self._read_fut.add_done_callback(self._pipe_closed)

    _pipe_closed = proactor_events._ProactorWritePipeTransport._pipe_closed
