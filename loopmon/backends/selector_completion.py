"""The selector-emulated backend's completion pass: readiness in, finished ops out.

``select(timeout)`` is called by the loop once per iteration, exactly where
``IocpProactor`` calls ``GetQueuedCompletionStatus``.  It delivers the cancelled
completions asked for since the last pass (``_finish_cancelled``), waits for readiness,
and for every fd that became ready runs the syscalls of the ops queued on it, in FIFO
order, completing their futures (``op_end``) -- and queues the loop's own
``add_reader``/``add_writer`` handles, which share the selector.  Futures completed here
run their callbacks in the same loop iteration.  It returns no events: the base loop's
``_process_events`` has nothing left to do.

The traps:

* **Poll epoll directly.**  ``EpollSelector.select`` builds a ``(key, events)`` list per
  pass; with epoll we call ``poll`` on the selector's epoll object and map raw fds through
  our own table (``self._fds``), translating the epoll mask as ``selectors`` would
  (anything but ``EPOLLIN`` counts as writable, anything but ``EPOLLOUT`` as readable),
  limited to the directions we watch.  The timeout is rounded up to a millisecond, as
  ``selectors`` does, so a timer due in 0.3 ms does not turn into a busy loop.  Other
  selectors (kqueue, poll) go through ``selectors`` and ``_dispatch``.
* **The stream hot path is inline.**  A plain ``EPOLLIN`` on an fd whose first reader is a
  socket transport's ``StreamReceive`` (and no ``add_reader`` handle) does
  ``_run_readers``' work right in the loop: ``recv_into``, set the byte count, queue the
  transport's persistent handle, ``op_end``.  Anything else takes ``_dispatch``.
* **Readiness lies.**  Another reader may have emptied the socket, or readiness was for
  an error: a syscall that would block leaves the op queued (level-triggered readiness
  brings it back) and clears the ``drained`` hint so the next receive tries inline.
* **A receive that leaves data behind says so.**  ``drained`` is set only when a
  ``recv_into`` got fewer bytes than it asked for (the socket is now empty), so the next
  receive may go straight to pending (``selector_receive``).  A datagram says nothing about
  the queue, so only ``recv_into`` sets it.
* **Registrations are lazy** (``fdtable``): readiness with nobody waiting -- no op, no
  handle, or a cancelled handle -- is the moment a direction is dropped.
* **Sends finish the whole buffer.**  A partial write keeps the op at the head of its
  queue with the rest of its buffer; a connect ends with ``SO_ERROR``; a sendfile keeps
  going until ``count`` bytes or end of file.
* **Write pipes learn that their reader left by readability** of their write end: a
  ``KIND_WAIT`` op (``wait_pipe_closed``) completes with ``b""``.
"""
from __future__ import annotations

import math
import os
import select as _select_mod
import socket
from typing import Any, Optional

from ..monitor.events import (
    KIND_ACCEPT, KIND_CONNECT, KIND_READ_PIPE, KIND_RECV, KIND_RECV_INTO, KIND_RECVFROM,
    KIND_RECVFROM_INTO, KIND_SEND, KIND_SENDTO, KIND_WRITE_PIPE,
)
from .fdtable import _READ, _WRITE, FdWaiters
from .selector_ops import _WOULD_BLOCK
from .stream_receive import StreamReceive

_NO_EVENTS: tuple = ()
_EPOLLIN = getattr(_select_mod, "EPOLLIN", 0)
_NOT_EPOLLIN = ~_EPOLLIN      # what selectors maps to EVENT_WRITE
_NOT_EPOLLOUT = ~getattr(_select_mod, "EPOLLOUT", 0)    # ... and to EVENT_READ


class ReadinessCompletionMixin:
    """``select()`` and the per-fd syscalls it runs, for ``SelectorProactor``.

    Uses its ``_epoll_poll``, ``_selector``, ``_fds``, ``_cancelled``, ``_loop`` and
    ``monitor``, and ``_finish_cancelled``/``_end_failed`` (``selector_ops``) and
    ``_set_mask`` (``fdtable``).
    """

    def select(self, timeout: Optional[float] = None) -> tuple:
        """Wait for readiness, run the syscalls of ready ops, complete their futures."""
        if self._cancelled:
            timeout = 0
        poll = self._epoll_poll
        if poll is not None:
            # EpollSelector.select() without its (key, events) list: raw (fd, epoll mask)
            if timeout is None:
                timeout = -1
            elif timeout <= 0:
                timeout = 0
            else:
                timeout = math.ceil(timeout * 1e3) * 1e-3   # as selectors: no busy wait
            try:
                ready = poll(timeout, len(self._fds) or 1)
            except InterruptedError:
                ready = ()
        else:
            ready = self._selector.select(timeout)
        if self._cancelled:
            self._finish_cancelled()
        add_callback = self._loop._add_callback
        fds = self._fds
        if poll is None:
            for key, events in ready:
                self._dispatch(key.data, events, add_callback)
            return _NO_EVENTS
        ready_queue = self._loop._ready
        for fd, ev in ready:
            st = fds.get(fd)
            if st is None:
                continue
            if ev == _EPOLLIN:
                readers = st.readers
                if readers and st.reader_handle is None:
                    op = readers[0]
                    if type(op) is StreamReceive:
                        # the hot path: a stream transport's receive, _run_readers' work inline
                        rec = op._lm_rec
                        try:
                            if rec is None:
                                n = op._lm_obj.recv_into(op._buffer)
                            else:   # the receive and its op_done in one call
                                n = op._recv_done(rec, op._lm_obj, op._buffer)
                        except _WOULD_BLOCK:
                            st.drained = False      # readiness lied: try inline next time
                            continue
                        except BaseException as exc:
                            readers.popleft()
                            self._end_failed(op, exc)
                            if readers:
                                self._run_readers(st)
                            continue
                        readers.popleft()
                        op._lm_backend = None
                        op.nbytes = n
                        st.drained = 0 < n < op._lm_n
                        ready_queue.append(op._lm_cont)
                        if readers:
                            self._run_readers(st)
                        continue
            # selectors' translation of the epoll mask, limited to what we watch
            events = (((_WRITE if ev & _NOT_EPOLLIN else 0)
                       | (_READ if ev & _NOT_EPOLLOUT else 0)) & st.mask)
            if events:
                self._dispatch(st, events, add_callback)
        return _NO_EVENTS

    def _dispatch(self, st: FdWaiters, events: int, add_callback: Any) -> None:
        """Readiness of one fd: run its ops' syscalls, queue the loop's reader/writer."""
        want = st.mask
        if events & _READ:
            handle = st.reader_handle
            if st.readers:
                self._run_readers(st)
            elif handle is None:
                want &= ~_READ      # readiness with nobody waiting: stop watching
            if handle is not None:
                if handle._cancelled:
                    st.reader_handle = None
                    if not st.readers:
                        want &= ~_READ
                else:
                    add_callback(handle)
        if events & _WRITE:
            handle = st.writer_handle
            if st.writers:
                self._run_writers(st)
            elif handle is None:
                want &= ~_WRITE
            if handle is not None:
                if handle._cancelled:
                    st.writer_handle = None
                    if not st.writers:
                        want &= ~_WRITE
                else:
                    add_callback(handle)
        if want != st.mask:
            self._set_mask(st, want)

    def _run_readers(self, st: FdWaiters) -> None:
        q = st.readers
        while q:
            op = q[0]
            kind = op._lm_kind
            obj = op._lm_obj
            try:
                if kind == KIND_RECV_INTO:
                    res = nbytes = obj.recv_into(op._lm_buf, 0, op._lm_arg)
                    st.drained = 0 < nbytes < op._lm_n
                elif kind == KIND_RECV:
                    res = obj.recv(op._lm_n, op._lm_arg)
                    nbytes = len(res)
                elif kind == KIND_READ_PIPE:
                    if op._lm_buf is None:
                        res = os.read(st.fd, op._lm_n)
                        nbytes = len(res)
                    else:
                        res = nbytes = os.readv(st.fd, (op._lm_buf,))
                elif kind == KIND_ACCEPT:
                    conn, addr = obj.accept()
                    conn.setblocking(False)
                    res = (conn, addr)
                    nbytes = 0
                elif kind == KIND_RECVFROM:
                    res = obj.recvfrom(op._lm_n, op._lm_arg)
                    nbytes = len(res[0])
                elif kind == KIND_RECVFROM_INTO:
                    res = obj.recvfrom_into(op._lm_buf, op._lm_n, op._lm_arg)
                    nbytes = res[0]
                else:  # KIND_WAIT: the write end of a pipe became readable: its reader left
                    res = b""
                    nbytes = 0
            except _WOULD_BLOCK:
                st.drained = False      # readiness lied (or another reader won): try inline next
                return
            except BaseException as exc:
                q.popleft()
                self._end_failed(op, exc)
                continue
            q.popleft()
            op._lm_backend = None
            op._lm_buf = None
            op.set_result(res)
            if op._lm_cont is not None:
                self._loop._ready.append(op._lm_cont)
            rec = op._lm_rec
            if rec is not None:
                self.monitor.op_done(rec, nbytes)

    def _run_writers(self, st: FdWaiters) -> None:
        q = st.writers
        while q:
            op = q[0]
            kind = op._lm_kind
            obj = op._lm_obj
            try:
                if kind == KIND_SEND or kind == KIND_WRITE_PIPE:
                    buf = op._lm_buf
                    n = obj.send(buf, op._lm_arg) if kind == KIND_SEND else os.write(st.fd, buf)
                    op._lm_done += n
                    if n < len(buf):
                        op._lm_buf = memoryview(buf)[n:]
                        return              # the socket buffer is full again
                    res = op._lm_done
                elif kind == KIND_SENDTO:
                    addr = op._lm_arg
                    res = obj.sendto(op._lm_buf, addr) if addr is not None else obj.send(op._lm_buf)
                    op._lm_done = res
                elif kind == KIND_CONNECT:
                    err = obj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"Connect call failed {op._lm_arg}")
                    res = None
                    if op._lm_rec is not None:
                        self._note_peer_of(st.fd, obj)     # connected: now it has a peer
                else:  # KIND_SENDFILE
                    in_fd, offset = op._lm_arg
                    while op._lm_done < op._lm_n:
                        n = os.sendfile(st.fd, in_fd, offset + op._lm_done, op._lm_n - op._lm_done)
                        if n == 0:
                            break
                        op._lm_done += n
                    res = op._lm_done
            except _WOULD_BLOCK:
                return
            except BaseException as exc:
                q.popleft()
                self._end_failed(op, exc)
                continue
            q.popleft()
            op._lm_backend = None
            op._lm_buf = None
            op.set_result(res)
            rec = op._lm_rec
            if rec is not None:
                self.monitor.op_done(rec, op._lm_done)
