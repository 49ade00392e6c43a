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
*pending*: we record ``op_start`` (and pin the bytes the op holds -- the receive size, or
the unsent rest of a send), queue it on its file descriptor, and make sure the selector
watches that fd in the right direction.  ``select(timeout)`` -- called by the loop once per
iteration, exactly where ``IocpProactor`` calls ``GetQueuedCompletionStatus`` -- waits,
retries the syscall for every op whose fd became ready, and completes futures (``op_end``).
Futures completed here run their callbacks in the same loop iteration.

Each fd has one small ``FdWaiters`` record (``fdtable``): FIFO queues of pending read-side and
write-side ops, plus the ``add_reader``/``add_writer`` handles of the loop, which share
the same selector.  Several ops may queue on one fd (IOCP allows that too); they complete
in order.

Where each part lives
---------------------
``SelectorProactor`` is assembled from one mixin per concern, each module opening with its
own mechanism and traps:

* ``selector_receive`` -- the read-side op methods (``recv*``, ``stream_receiver``,
  ``accept``, ``wait_pipe_closed``): try first, the "drained" shortcut, the stream hot path.
* ``selector_send`` -- the write-side op methods (``send``, ``try_send``, ``sendto``,
  ``sendfile``, ``connect``): whole buffers, the future-less idle write.
* ``selector_completion`` -- ``select()``: epoll polled directly, each ready fd's ops run in
  order, the stream receive completed inline.
* ``selector_ops`` -- a pending op's life: ``_PendingOp`` (the op *is* its future),
  ``_pend``, the cancel that is only a request, failures, cancelled completions.
* ``fdtable`` -- the per-fd records and the selector registrations; ``faults`` -- the
  opt-in re-creations of bpo-33694 and bpo-32710; ``stream_receive`` -- a socket
  transport's persistent receive.
* this module -- the class itself: construction, ``_stop_serving`` and ``close()``.

The traps that span them
------------------------
* **A cancel is a request, not an event.**  The future is cancelled for its waiter at once,
  but the op stays in flight until its own cancelled completion is delivered by the next
  ``select()`` pass, as on IOCP, where a cancel only *asks* the kernel.  That gap is where
  bpo-33694 lived (``selector_ops``, ``faults``).
* **Registrations are lazy, and closed fds come back.**  See ``fdtable``: a direction
  stays registered after its queue drains, and a record is replaced when a new object turns
  up on a recycled fd number.
* **The hot paths were tuned by instruction count** (callgrind, per echo round trip): the
  split into modules moved code verbatim, and inlined copies (``_pend`` in
  ``recv_into_then``, ``_run_readers`` in ``select``) are deliberate.  Keep them in step.
* **Internal fds are not recorded.**  The loop's self-pipe reader uses ``recv_unrecorded``.
* **close() ends everything**: every queued op is cancelled and ended, the monitor drained
  (``Monitor.drain_at_close``), leaked fault buffers let go, the selector closed.
"""
from __future__ import annotations

import selectors
from typing import Any, Iterable, Optional

from .faults import FaultEmulationMixin
from .fdtable import FdTableMixin, FdWaiters, _fd_or_minus_one, _fileno_or_none
from .selector_completion import ReadinessCompletionMixin
from .selector_ops import PendingOpsMixin, _PendingOp
from .selector_receive import ReceiveSubmitMixin
from .selector_send import SendSubmitMixin
from .stream_receive import StreamReceive

# what other modules and tests import from here
__all__ = ["SelectorProactor", "FdWaiters", "StreamReceive", "_PendingOp", "_fileno_or_none",
           "_fd_or_minus_one"]


class SelectorProactor(ReceiveSubmitMixin, SendSubmitMixin, ReadinessCompletionMixin,
                       PendingOpsMixin, FaultEmulationMixin, FdTableMixin):
    """A completion-style proactor emulated with ``selectors`` (see the module docstring)."""

    backend_name = "selector"

    def __init__(self, monitor: Any = None, faults: Iterable[str] = (),
                 selector: Optional[selectors.BaseSelector] = None) -> None:
        self.monitor = monitor
        # a bound method, made once (see StreamReceive.__init__): the hottest send records
        # through it
        self._send_whole = monitor.send_whole if monitor is not None else None
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

    def _stop_serving(self, obj: Any) -> None:
        """A listening socket is about to be closed: cancel its ops and forget its fd now."""
        fd = _fileno_or_none(obj)
        st = self._fds.get(fd) if fd is not None else None
        if st is None or st.obj is not obj:
            return
        for op in list(st.readers) + list(st.writers):
            op.cancel()
        self._forget(st)

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
