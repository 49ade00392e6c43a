"""How loopmon's proactor transports read: delivered-bytes accounting and the read loop.

The backend counts bytes *received from the OS*; only the transport knows when those bytes
are *delivered* -- handed to ``data_received`` or fed to a ``BufferedProtocol``.  The gap
between the two counters is exactly how bpo-33694-class loss shows up, so the count is
taken at the moment of hand-over and not before.  Three mixins, for stream and pipe
transports (``loopmon.transports`` assembles them):

* ``_CountDeliveredMixin`` hands received bytes to the protocol -- in order, never while
  paused -- and counts each hand-over; bytes that arrive while reading is paused wait in a
  backlog (counted when, and if, they are delivered; counted as *abandoned* if the
  connection is lost first).  End-of-file is delivered once: after it, ``resume_reading``
  issues no new receive.
* ``_StreamReceiveMixin`` is the read loop of a socket transport on a backend that offers
  ``stream_receiver`` (the selector backend): one persistent receive object and one
  persistent handle, no future and no ``Handle`` per chunk.
* ``_ContinuedReadMixin`` is the stdlib read loop (``_loop_reading``) where the backend
  offers ``recv_into_then`` (pipes; io_uring): a future per receive, but one persistent
  handle instead of a done callback (and its ``Handle``) per chunk.

Both read loops keep the stdlib's order -- take the result, issue the next receive unless
closing or paused, then deliver -- and its ``_read_fut`` bookkeeping, and they make an
exception raised by ``data_received`` a fatal transport error, as on the selector loop
(the stdlib proactor lets it escape and leaves the transport open).  3.12+ hands
protocols ``bytes`` (3.10/3.11: a ``bytearray`` slice), as the stdlib does.
"""
from __future__ import annotations

import sys
from asyncio import events, exceptions
from asyncio.log import logger
from asyncio.protocols import BufferedProtocol
from collections import deque

_IMMUTABLE_CHUNKS = sys.version_info >= (3, 12)    # 3.12+ hands protocols bytes, not bytearray
_CONTINUED = object()   # _loop_reading(_CONTINUED): the persistent read handle's call


def _read_failed(transport, exc: OSError) -> None:
    """The ``except`` clauses of the stdlib's ``_loop_reading`` for a read that raised ``exc``
    (called inside the handler, so a debug log still carries the traceback)."""
    if isinstance(exc, ConnectionAbortedError):
        if not transport._closing:
            transport._fatal_error(exc, "Fatal read error on pipe transport")
        elif transport._loop.get_debug():
            logger.debug("Read error on pipe transport while closing", exc_info=True)
    elif isinstance(exc, ConnectionResetError):
        transport._force_close(exc)
    else:
        transport._fatal_error(exc, "Fatal read error on pipe transport")

class _CountDeliveredMixin:
    """Hands received bytes to the protocol -- in order, never while paused -- and counts them.

    Replaces the stdlib's ``_data_received``/``resume_reading`` pair.  The stdlib keeps at most
    one paused chunk (``_pending_data_length``) and feeds a ``BufferedProtocol`` the whole
    chunk even if the protocol pauses reading half way through it.  Here a *backlog* (a deque
    of ``(data, length)``, EOF being length 0) holds whatever arrives while paused, plus the
    unfed rest of a chunk a buffered protocol paused in; ``resume_reading`` drains it, oldest
    first, before anything newer is delivered.  ``delivered`` is counted per hand-over.
    Once the OS reported end-of-file, ``resume_reading`` issues no new receive: the stdlib
    one did, and a protocol paused across EOF got ``eof_received`` twice (the second EOF
    came from the new receive, the first from the backlog).
    """

    __slots__ = ()
    _lm_backlog = None          # deque, created on first need
    _lm_eof = False             # the OS reported end-of-file: never receive again

    def _data_received(self, data, length):
        if not length:
            self._lm_eof = True
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
        if self._read_fut is None and not self._lm_eof:
            self._loop.call_soon(self._loop_reading, None)
        if self._lm_backlog:
            self._loop.call_soon(self._lm_drain_backlog)

    def _call_connection_lost(self, exc):
        # bytes still waiting in the backlog (reading was paused) will never be delivered:
        # the program gave up on them, which is not data loss by the loop -- count them apart
        backlog = self._lm_backlog
        if backlog:
            mon = self._loop.monitor
            if mon is not None:
                mon.abandoned(sum(length for _, length in backlog))
            backlog.clear()
        super()._call_connection_lost(exc)

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


class _ContinuedReadMixin:
    """The stdlib read loop (``_loop_reading``) without a done callback per receive.

    The stdlib transport adds ``_loop_reading`` as a done callback to every receive future:
    on completion the future's ``call_soon`` builds a new ``Handle`` (and copies the context)
    for each chunk.  A backend offering ``recv_into_then(conn, buf, handle)`` instead queues
    one persistent ``Handle`` per transport when the receive completes or fails -- exactly
    where the done callback would have been queued (inline: before the chunk is delivered;
    pending: when ``select()`` completes it), so callback order is unchanged.  A cancelled
    receive queues nothing: only ``close()``/``_force_close()`` cancel it, after setting
    ``_read_fut`` to None, and then the stdlib callback did nothing either.  Like the
    selector loop's reader handle, the persistent handle runs in one context.

    ``_lm_reading`` is the receive the handle will continue: ``_read_fut`` is reset by
    ``close()``, yet the stdlib still delivers a chunk that completed before it.
    """

    __slots__ = ()
    _lm_recv_into_then = None
    _lm_reading = None

    def _lm_init_reading(self, loop):
        then = getattr(loop._proactor, "recv_into_then", None)
        if then is not None:
            self._lm_recv_into_then = then
            self._lm_read_handle = events.Handle(self._loop_reading, (_CONTINUED,), loop, None)

    def _loop_reading(self, fut=None):
        length = -1
        data = None
        then = self._lm_recv_into_then
        if fut is _CONTINUED:           # the persistent handle: continue _lm_reading
            fut = self._lm_reading
            if fut is None or not fut.done():
                return
            self._lm_reading = None
        try:
            if fut is not None:
                assert self._read_fut is fut or (self._read_fut is None and self._closing)
                self._read_fut = None
                if fut.done():
                    # deliver data later in "finally" clause
                    length = fut.result()
                    if length == 0:
                        # we got end-of-file so no need to reschedule a new read
                        return
                    if _IMMUTABLE_CHUNKS:
                        data = memoryview(self._data)[:length].tobytes()
                    else:
                        data = self._data[:length]
                else:
                    # the future will be replaced by next proactor.recv call
                    fut.cancel()
            if self._closing:
                # since close() has been called we ignore any read data
                return
            if not self._paused:
                # reschedule a new read
                if then is not None:
                    self._read_fut = self._lm_reading = then(
                        self._sock, self._data, self._lm_read_handle)
                else:
                    self._read_fut = self._loop._proactor.recv_into(self._sock, self._data)
        except OSError as exc:
            _read_failed(self, exc)
        except exceptions.CancelledError:
            if not self._closing:
                raise
        else:
            if not self._paused and then is None:
                self._read_fut.add_done_callback(self._loop_reading)
        finally:
            if length > 0 and not self._paused and not self._lm_backlog:
                # _data_received -> _lm_deliver for the common case: a plain protocol
                protocol = self._protocol
                if isinstance(protocol, BufferedProtocol):
                    self._lm_deliver(data, length)
                else:
                    mon = self._loop.monitor
                    if mon is not None:
                        mon.delivered(length)
                    try:
                        protocol.data_received(data)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            elif length > -1:
                self._data_received(data, length)


class _StreamReceiveMixin:
    """The read loop of a socket transport on a persistent receive: no future per chunk.

    Where the backend offers ``stream_receiver(sock, buf, handle)`` (the selector backend,
    ``backends.stream_receive``), one ``StreamReceive`` object stands for every receive of
    the transport and is its ``_read_fut`` while one is in flight.  ``restart()`` issues the
    next receive; when it ends -- inline, or in ``select()`` -- the backend stores the byte
    count in ``nbytes`` (-2: failed, ``take_error()``) and queues the transport's persistent
    handle, ``_lm_received``, exactly where ``_loop_reading``'s done callback would have been
    queued.  ``_lm_received`` is ``_loop_reading`` for that completion: same order (take
    the result, issue the next receive unless closing or paused, then deliver), same error
    handling, same ``_read_fut`` bookkeeping (a completion taken after ``close()`` reset
    ``_read_fut`` is still delivered, as the stdlib does).  A cancel (``close()``) queues
    nothing, as no done callback would run for a cancelled future.

    ``_loop_reading(None)`` (the first read, ``resume_reading``) calls ``start()``, which
    does nothing while a receive is in flight or its completion is queued -- so a double
    resume cannot put two receives on one buffer.  A plain (non-buffered) protocol is
    remembered by ``set_protocol`` so delivery needs no ``isinstance`` per chunk.
    """

    __slots__ = ()
    _lm_receiver = None
    _lm_plain_protocol = None   # the protocol, unless it is a BufferedProtocol
    _lm_count_delivered = None  # the monitor's bound delivered() (a bound method: the cheapest call)

    def set_protocol(self, protocol):
        super().set_protocol(protocol)
        self._lm_plain_protocol = None if isinstance(protocol, BufferedProtocol) else protocol

    def _lm_init_receiver(self):
        """After the base ``__init__`` (``_sock`` and ``_data`` exist, the first read is queued)."""
        make = getattr(self._loop._proactor, "stream_receiver", None)
        if make is not None:
            if _IMMUTABLE_CHUNKS:
                # 3.12+ hands protocols bytes: copy out through one view kept for good
                # (memoryview(...) per chunk cost as much again as the copy on 3.12)
                self._lm_view = memoryview(self._data)
            mon = self._loop.monitor
            self._lm_count_delivered = mon.delivered if mon is not None else None
            self._lm_receiver = make(self._sock, self._data,
                                     events.Handle(self._lm_received, (), self._loop, None))

    def _loop_reading(self, fut=None):
        r = self._lm_receiver
        if r is None or fut is not None:
            super()._loop_reading(fut)
            return
        try:
            if self._closing:
                return
            if not self._paused:
                r.start()
                self._read_fut = r
        except OSError as exc:
            _read_failed(self, exc)

    def _lm_received(self):
        """The persistent handle: a receive of ``_lm_receiver`` ended (``_loop_reading(fut)``)."""
        r = self._lm_receiver
        length = r.nbytes
        if length <= 0:
            self._lm_received_nothing(r, length)
            return
        r.nbytes = -1
        data = self._lm_view[:length].tobytes() if _IMMUTABLE_CHUNKS else self._data[:length]
        try:
            try:
                if self._closing or self._paused:
                    self._read_fut = None
                else:
                    r.restart()         # the next receive: _read_fut stays r
            except BaseException:
                self._read_fut = None   # no receive in flight, as if restart() had not run
                raise
        except OSError as exc:
            _read_failed(self, exc)
        finally:
            protocol = self._lm_plain_protocol
            if protocol is not None and not self._paused and not self._lm_backlog:
                # _data_received -> _lm_deliver for the common case: a plain protocol
                count_delivered = self._lm_count_delivered
                if count_delivered is not None:
                    count_delivered(length)
                try:
                    protocol.data_received(data)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            else:
                self._data_received(data, length)

    def _lm_received_nothing(self, r, length):
        """End-of-file (0) or a failed receive (-2): what ``_loop_reading`` does for them."""
        if length == -1:
            return                      # nothing ended (a handle never runs twice per end)
        self._read_fut = None
        if length == 0:
            r.nbytes = -1
            self._data_received(None, 0)    # end-of-file: no new receive
            return
        try:
            raise r.take_error()
        except OSError as exc:
            _read_failed(self, exc)
        except exceptions.CancelledError:
            if not self._closing:
                raise
