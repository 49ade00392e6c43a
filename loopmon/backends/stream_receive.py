"""A stream transport's receive without a future per chunk (selector-emulated backend).

A proactor's read loop issues one receive at a time: ``recv_into(sock, buf)`` returns a
future, the future completes, the transport delivers the chunk and issues the next receive.
On the selector-emulated backend the future is the op's only state, so every chunk costs a
future (``asyncio.Future.__init__`` even calls ``loop.get_debug()``), ten slot writes,
``set_result``/``done``/``result`` and a queue walk -- per chunk, on the hottest path
of every stream.

``StreamReceive`` is one object per socket transport, re-armed for every chunk.  It *is* the
op while a receive is pending: it carries the same ``_lm_*`` slots as ``selector._PendingOp``
and sits in the fd's reader queue like one, so the generic paths (``_run_readers``,
``_end_failed``, ``close``, ``_replace_stale``) handle it unchanged; ``select()`` has a short
path for it at the head of a queue.  It answers ``done``/``set_result``/``set_exception``/
``cancel`` as the future would, and the transport keeps it as ``_read_fut``.

The protocol with the transport (``transport_reads._StreamReceiveMixin``):

* ``restart()`` issues the next receive; the transport calls it right after taking the last
  one's result.  The receive completes inline (the byte count is stored and the transport's
  persistent handle queued at once) or goes pending in the fd's reader queue (``select()``
  completes it and queues the handle).  ``start()`` is the same for the transport's first
  read and ``resume_reading``, but does nothing while a receive is in flight or its result
  is not yet taken: one receive at a time, however often reading is resumed.
* ``nbytes`` is -1 until a receive ends, then its byte count (0: end-of-file) or -2 when it
  failed (``take_error()`` hands over the exception); the transport takes it (sets -1).
* A cancel (``transport.close()``) is a request, as for every op: the in-flight op is handed
  to a detached record that ends on the next ``select()`` pass (cancel-drops-data reads
  and drops through it), and the receiver itself is idle at once -- reusable, and its
  handle is not queued, exactly as no done callback would have run for a cancelled future.

What is recorded is exactly what ``recv_into`` records: ``op_inline`` (or
``op_failed_inline``) for an inline end, ``op_start_pinned`` ... ``op_end`` for a pending
one, ``op_cancel`` and a cancelled ``op_end`` for a cancel.  The "last receive drained the
socket" hint (``FdWaiters.drained``) sends a receive straight to pending, as it does
for ``recv_into``: the receiver keeps its fd's record (``_lm_st``) and, because ``drained``
is only ever true on a live record watched for reading (``fdtable``), that one attribute is
the whole test -- no table lookup, no mask test, no ``fileno()`` per chunk.

Traps: the generic paths clear ``_lm_backend`` when an op ends, so every receive that goes
pending sets it again (set means "pending and cancellable", as on a ``_PendingOp``); they
also drop an ended op's ``_lm_buf``, which here is a property that always answers the
transport's buffer (the one buffer every receive of the transport uses).  And a socket
closed behind the transport's back (not through it) is only noticed when its fd number is
reused (the stale record is replaced and its ops fail with ``EBADF``) or when the receive
takes the long way: a receive waiting on a closed fd waits, as it would on the selector
loop.
"""
from __future__ import annotations

from typing import Any, Optional

from ..monitor.events import KIND_RECV_INTO
from .fdtable import FdWaiters, _fd_or_minus_one

_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class _CancelledReceive:
    """The in-flight part of a cancelled ``StreamReceive``: what ``_finish_cancelled`` reads."""

    __slots__ = ("_lm_kind", "_lm_obj", "_lm_fd", "_lm_buf", "_lm_n", "_lm_done", "_lm_rec")

    def __init__(self, r: "StreamReceive") -> None:
        self._lm_kind = r._lm_kind
        self._lm_obj = r._lm_obj
        self._lm_fd = r._lm_fd
        self._lm_buf = r._lm_buf
        self._lm_n = r._lm_n
        self._lm_done = 0
        self._lm_rec = r._lm_rec


_NO_RECORD = FdWaiters(-1, None)    # never drained: the first receive takes the long way


class StreamReceive:
    """A socket transport's persistent receive into its buffer (see the module docstring)."""

    __slots__ = ("_lm_backend", "_lm_kind", "_lm_obj", "_lm_fd", "_lm_n",
                 "_lm_arg", "_lm_done", "_lm_rec", "_lm_cont", "nbytes", "error",
                 "_proactor", "_monitor", "_buffer", "_lm_st",
                 "_start_recv", "_recv_done")

    def __init__(self, proactor: Any, sock: Any, buf: Any, handle: Any) -> None:
        self._proactor = proactor
        self._monitor = mon = proactor.monitor
        self._buffer = buf
        # bound methods, made once: calling one is the cheapest call from Python there is
        # (a method looked up on the Monitor -- a subclass of the C core -- misses the
        # interpreter's specialised call path and costs ~3x as much per call)
        self._start_recv = mon.op_start_recv if mon is not None else None
        self._recv_done = mon.recv_into_done if mon is not None else None
        self._lm_backend = None         # set while a receive is pending (cancellable)
        self._lm_kind = KIND_RECV_INTO
        self._lm_obj = sock
        self._lm_fd = sock.fileno()
        self._lm_n = len(buf)
        self._lm_arg = 0
        self._lm_done = 0
        self._lm_rec = None
        self._lm_cont = handle          # the transport's persistent handle
        self._lm_st = _NO_RECORD        # sock's fd record, once a receive went pending
        self.nbytes = -1                # what an ended receive got: > 0, 0 (EOF), -2 (error)
        self.error: Optional[BaseException] = None

    def __repr__(self) -> str:
        state = ("pending" if self._lm_backend is not None
                 else "idle" if self.nbytes == -1 else "completed")
        return f"<StreamReceive fd={self._lm_fd} {state}>"

    # ------------------------------------------------------------------ the transport's side
    def start(self) -> None:
        """Issue the next receive (no-op while one is in flight or its result is untaken)."""
        if self._lm_backend is None and self.nbytes == -1:
            self.restart()

    def restart(self) -> None:
        """Issue the next receive; the caller just took the last one's result (so: idle)."""
        st = self._lm_st
        if st.drained:
            # the last receive emptied the socket: don't pay for a doomed syscall.
            # (drained implies: st is still sock's live record, watched for reading, and
            # the backend is open -- fdtable and close() clear it otherwise)
            self._lm_backend = self._proactor
            start_recv = self._start_recv
            if start_recv is not None:
                self._lm_rec = start_recv(st.fd, self._lm_n)
            st.readers.append(self)
            return
        proactor = self._proactor
        sock = self._lm_obj
        try:
            n = sock.recv_into(self._buffer)
        except _WOULD_BLOCK:
            st = proactor._fds.get(self._lm_fd)
            proactor._pend_stream_receive(self, st if st is not None and st.obj is sock else None)
            return
        except Exception as exc:
            mon = self._monitor
            if mon is not None:
                mon.op_failed_inline(KIND_RECV_INTO, _fd_or_minus_one(sock), self._lm_n, exc)
            self.error = exc
            self.nbytes = -2
            proactor._loop._add_callback(self._lm_cont)
            return
        mon = self._monitor
        if mon is not None:
            mon.op_inline(KIND_RECV_INTO, self._lm_fd, self._lm_n, n)
        self.nbytes = n
        proactor._loop._ready.append(self._lm_cont)     # a handle nobody cancels

    def take_error(self) -> BaseException:
        """The exception the ended receive failed with (``nbytes == -2``); forgets it."""
        exc, self.error = self.error, None
        self.nbytes = -1
        return exc

    # ------------------------------------------------------------------ the future's face
    @property
    def _lm_buf(self) -> Any:
        """The op's buffer, as on a ``_PendingOp``: always the transport's own."""
        return self._buffer

    @_lm_buf.setter
    def _lm_buf(self, value: Any) -> None:
        pass    # the generic paths drop an ended op's buffer; this one is reused, not released

    def done(self) -> bool:
        return self.nbytes != -1

    def set_result(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def set_exception(self, exc: BaseException) -> None:
        self.error = exc
        self.nbytes = -2

    def cancel(self, msg: Any = None) -> bool:
        """Cancel a pending receive: a request (the op ends next ``select()``); idle at once."""
        proactor = self._lm_backend
        if proactor is None:
            return False                # nothing in flight (or the backend already let go)
        self._lm_backend = None
        proactor._request_cancel_stream_receive(self, _CancelledReceive(self))
        self._lm_rec = None
        return True
