"""Proactor transports for POSIX that count the bytes they hand to protocols.

The classes the loop's transport factories build: ``SocketTransport``, ``ReadPipeTransport``,
``WritePipeTransport`` and ``DatagramTransport``, each the stdlib proactor transport plus
loopmon's fixes.  How stream and pipe transports read and count delivered bytes lives in
``loopmon.transport_reads``; here:

* The datagram transport delivers in a ``finally`` clause of ``_loop_reading``; we work out
  beforehand whether that call will deliver (the same conditions it checks) and count then
  (a bare loop has ``loop.monitor is None`` and counts nothing).
* ``_call_connection_lost`` calls ``sock.shutdown()``, which raises ``ENOTCONN`` on POSIX
  for unconnected UDP sockets and torn-down TCP connections; see ``_ShutdownTolerantSocket``.
* The stdlib write-pipe transport learns that the reader of a write pipe went away from a
  16-byte ``recv`` on the write end, which works on a Windows named pipe but not on a POSIX
  pipe, so ``WritePipeTransport`` asks the backend for ``wait_pipe_closed`` instead.
* Socket writes that complete inline skip the future and its done-callback hop
  (``_InlineWriteMixin``, where the backend offers ``try_send``: selector and io_uring).
* Datagram endpoints keep sending after a send fails at submission and keep receiving after
  an ICMP error went to ``error_received`` (the stdlib proactor stalls in both cases).
"""
from __future__ import annotations

from asyncio import proactor_events

from .transport_reads import _ContinuedReadMixin, _CountDeliveredMixin, _StreamReceiveMixin

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


def _peer_text(peername) -> str:
    """``('10.0.0.1', 80)`` -> ``10.0.0.1:80``, IPv6 -> ``[::1]:80``, a Unix path as is."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(peername, str):
        return peername
    if isinstance(peername, bytes) and peername:
        return peername.decode("utf-8", "backslashreplace")   # an abstract Unix socket
    return ""


class _TolerantCloseMixin:
    __slots__ = ()

    def _call_connection_lost(self, exc):
        sock = self._sock
        if (not self._called_connection_lost and sock is not None
                and hasattr(sock, "shutdown")):
            self._sock = _ShutdownTolerantSocket(sock)
        super()._call_connection_lost(exc)


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
    _lm_try_send = None

    def write(self, data):
        # (no _closing test: close() and _force_close() always count _conn_lost too)
        if (self._write_fut is None and not self._buffer and not self._conn_lost
                and not self._eof_written and self._empty_waiter is None):
            if type(data) is not bytes:
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    _base_write(self, data)     # its TypeError
                    return
                data = bytes(data)          # the caller may reuse its buffer
            if not data:
                return
            try_send = self._lm_try_send
            if try_send is not None:
                fut = try_send(self._sock, data)
                if fut is None:
                    return                  # sent inline, recorded, no future: still IDLE
            else:
                fut = self._loop._proactor.send(self._sock, data)
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    return                  # sent inline: still IDLE
            self._write_fut = fut
            if not fut.done():
                self._pending_write = len(data)
                fut.add_done_callback(self._loop_writing)
                self._maybe_pause_protocol()
            else:                           # failed: _loop_writing(f) reports it
                fut.add_done_callback(self._loop_writing)
            return
        _base_write(self, data)


class SocketTransport(_CountDeliveredMixin, _StreamReceiveMixin, _ContinuedReadMixin,
                      _InlineWriteMixin, _TolerantCloseMixin,
                      proactor_events._ProactorSocketTransport):
    """``_ProactorSocketTransport`` + delivered-bytes accounting + inline writes and reads.

    The state the read and write paths touch per chunk lives in slots -- the stdlib's own
    attributes too: its ``__init__`` assigns them as usual and the slot descriptors take
    them.  An instance ``__dict__`` (the base classes have one) loses its shared-key layout
    as soon as instances add attributes in different orders, and 3.12+ then stops
    specialising every attribute access on it; a slot is a fixed offset on every version.
    The mixins' class-level defaults for the ``_lm_*`` names are shadowed by these slots,
    so ``__init__`` sets them all before the base ``__init__`` runs.
    """

    __slots__ = (
        # stdlib proactor transport state (assigned by its __init__ and methods)
        "_sock", "_protocol", "_server", "_buffer", "_read_fut", "_write_fut",
        "_pending_write", "_conn_lost", "_closing", "_called_connection_lost",
        "_eof_written", "_empty_waiter", "_pending_data_length", "_paused", "_data",
        # ours
        "_lm_try_send", "_lm_receiver", "_lm_view", "_lm_plain_protocol", "_lm_count_delivered",
        "_lm_backlog", "_lm_eof", "_lm_peer_fd",
    )

    def __init__(self, loop, *args, **kw):
        # before the base __init__, which schedules the first _loop_reading
        self._lm_try_send = getattr(loop._proactor, "try_send", None)
        self._lm_receiver = self._lm_view = self._lm_plain_protocol = self._lm_count_delivered = None
        self._lm_backlog = None
        self._lm_eof = False
        self._lm_peer_fd = None
        super().__init__(loop, *args, **kw)
        self._lm_note_peer(loop)
        self._lm_init_receiver()
        if self._lm_receiver is None:
            self._lm_init_reading(loop)

    def _lm_note_peer(self, loop) -> None:
        """Tell the monitor who is on the other end of this fd, once: its ops carry only the
        fd, and the op table shows ``fd N · peer`` from this (``Monitor.note_peer``)."""
        mon = getattr(loop, "monitor", None)
        if mon is None:
            return
        peer = _peer_text(self._extra.get("peername"))
        if peer:
            fd = self._sock.fileno()
            self._lm_peer_fd = fd
            mon.note_peer(fd, peer)

    def _call_connection_lost(self, exc):
        fd = self._lm_peer_fd
        if fd is not None:
            # before the socket closes: its fd number may come back for another connection
            self._lm_peer_fd = None
            self._loop.monitor.forget_peer(fd)
        super()._call_connection_lost(exc)


class ReadPipeTransport(_CountDeliveredMixin, _ContinuedReadMixin, _TolerantCloseMixin,
                        proactor_events._ProactorReadPipeTransport):
    """``_ProactorReadPipeTransport`` + delivered-bytes accounting + continued reads."""

    def __init__(self, loop, *args, **kw):
        self._lm_init_reading(loop)
        super().__init__(loop, *args, **kw)


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
