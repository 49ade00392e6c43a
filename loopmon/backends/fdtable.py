"""The readiness table of the selector-emulated backend: who waits on which fd.

Each fd the backend or the loop waits on has one ``FdWaiters`` record: FIFO queues of
pending read-side and write-side ops, the loop's ``add_reader``/``add_writer`` handles (which
share the same selector), the direction mask the selector currently watches, and a hint.
``FdTableMixin`` keeps the records in ``self._fds`` and keeps the selector in step with them.

Its two traps:

* **Registrations are lazy.**  Re-registering an fd for every receive costs two
  ``epoll_ctl`` calls per round trip, so a direction stays registered after its queue
  drains; ``SelectorProactor.select`` drops it only when readiness fires with nobody
  waiting (one spurious wakeup at most).
* **A closed fd is forgotten by the kernel, not by us.**  Transports close their sockets
  without telling the proactor.  epoll drops a closed fd by itself, but our record (and the
  ``selectors`` key) stay, and the fd *number* comes back with the next socket.  So a record
  remembers the object it was made for; a different, live object arriving on the same fd
  number replaces the stale record -- re-registering from scratch and failing any ops still
  queued on the dead object with ``EBADF`` -- instead of trusting a registration the kernel
  no longer has.
"""
from __future__ import annotations

import asyncio
import errno
import selectors
from collections import deque
from typing import Any, Optional

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class FdWaiters:
    """Everything waiting on one fd: queued ops per direction and the loop's reader/writer."""

    __slots__ = ("fd", "obj", "readers", "writers", "reader_handle", "writer_handle", "mask",
                 "drained")

    def __init__(self, fd: int, obj: Any) -> None:
        self.fd = fd
        self.obj = obj                  # the socket/file the ops belong to (None: add_reader only)
        self.readers: deque = deque()
        self.writers: deque = deque()
        self.reader_handle: Optional[asyncio.Handle] = None
        self.writer_handle: Optional[asyncio.Handle] = None
        self.mask = 0                   # what the selector currently watches
        # the last pending receive left the socket empty, so the next one may go straight
        # to pending.  Only ever true for a live record watched for reading (cleared when
        # READ is dropped, when the record is forgotten, and when the backend closes).
        self.drained = False


def _fileno_or_none(obj: Any) -> Optional[int]:
    try:
        fd = obj.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if fd >= 0 else None


def _fd_or_minus_one(obj: Any) -> int:
    fd = _fileno_or_none(obj)
    return -1 if fd is None else fd


class FdTableMixin:
    """``self._fds`` and ``self._selector`` bookkeeping for ``SelectorProactor``.

    Needs ``self._end_failed(op, exc)`` from the proactor (to fail ops of a dead object).
    """

    _fds: dict
    _selector: selectors.BaseSelector

    # ------------------------------------------------------------------ loop's readers/writers
    def add_handle(self, fd: int, handle: asyncio.Handle, writer: bool) -> None:
        """Install the loop's ``add_reader``/``add_writer`` handle (replacing and cancelling one)."""
        st = self._fds.get(fd)
        if st is None:
            st = self._fds[fd] = FdWaiters(fd, None)
        elif st.obj is not None and _fileno_or_none(st.obj) != fd:
            st = self._replace_stale(st, None)
        if writer:
            old, st.writer_handle = st.writer_handle, handle
            self._set_mask(st, st.mask | _WRITE)
        else:
            old, st.reader_handle = st.reader_handle, handle
            self._set_mask(st, st.mask | _READ)
        if old is not None:
            old.cancel()

    def remove_handle(self, fd: int, writer: bool) -> bool:
        st = self._fds.get(fd)
        if st is None:
            return False
        if writer:
            old, st.writer_handle = st.writer_handle, None
            want = st.mask & ~_WRITE if not st.writers else st.mask
        else:
            old, st.reader_handle = st.reader_handle, None
            want = st.mask & ~_READ if not st.readers else st.mask
        if old is None:
            return False
        old.cancel()
        self._set_mask(st, want)
        return True

    def has_handles(self, fd: int) -> bool:
        st = self._fds.get(fd)
        return st is not None and (st.reader_handle is not None or st.writer_handle is not None)

    # ------------------------------------------------------------------ records and the selector
    def _set_mask(self, st: FdWaiters, mask: int) -> None:
        old = st.mask
        if mask == old:
            return
        if not mask & _READ:
            st.drained = False          # nobody watches: a receive must not just wait
        sel = self._selector
        try:
            if not old:
                sel.register(st.fd, mask, st)
            elif not mask:
                sel.unregister(st.fd)
            else:
                sel.modify(st.fd, mask, st)
        except KeyError:
            # the selector's table disagrees with ours (a stale fd): start over for this fd
            try:
                sel.unregister(st.fd)
            except (KeyError, ValueError, OSError):
                pass
            if mask:
                sel.register(st.fd, mask, st)
        st.mask = mask

    def _forget(self, st: FdWaiters) -> None:
        st.drained = False              # a dead record: a receive cached on it takes the long way
        if self._fds.get(st.fd) is st:
            del self._fds[st.fd]
        if st.mask:
            try:
                self._selector.unregister(st.fd)
            except (KeyError, ValueError, OSError):
                pass
            st.mask = 0

    def _replace_stale(self, st: FdWaiters, obj: Any) -> FdWaiters:
        """The fd number now belongs to a new object: the old one was closed behind our back."""
        stale_ops = list(st.readers) + list(st.writers)
        st.readers.clear()
        st.writers.clear()
        handles = (st.reader_handle, st.writer_handle)
        self._forget(st)
        new = self._fds[st.fd] = FdWaiters(st.fd, obj)
        # add_reader/add_writer handles belong to the fd number, as on selector_events
        new.reader_handle, new.writer_handle = handles
        self._set_mask(new, (_READ if handles[0] is not None else 0)
                       | (_WRITE if handles[1] is not None else 0))
        for op in stale_ops:
            self._end_failed(op, OSError(errno.EBADF, "Bad file descriptor (closed while pending)"))
        return new
