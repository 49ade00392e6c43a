"""Windows: the stdlib ``IocpProactor``, wrapped by the same instrumentation.

On Windows the completion machinery is real: ``IocpProactor`` submits overlapped
``WSARecv``/``WSASend``/``AcceptEx``/``ConnectEx``/``TransmitFile``/``ReadFile`` ops and
completes their futures from ``GetQueuedCompletionStatus``.  We do not re-implement any of
it.  ``InstrumentedIocpProactor`` is a *composition* wrapper: every op method calls the
inner proactor and records

* ``op_start_pinned`` at submission (the buffer is what the overlapped op holds: the
  receive size or the send buffer -- IOCP pins that memory until the completion packet);
* ``op_cancel`` through a wrapped ``future.cancel`` (on IOCP a cancel is ``CancelIoEx``:
  only a request);
* ``op_end`` from a done callback, with the bytes the result carries.

Done callbacks cost a ``call_soon`` round trip per op -- more than the selector backend's
inline recording -- but they are the only hook that does not reach into ``_overlapped``.
An op that raises at submission is ``op_failed_inline`` and the exception propagates, as
the stdlib's does.  The loop's own self-pipe reads are not recorded.

Faults are emulations of the selector backend; on IOCP the real bugs are fixed, so asking
for one is a ``ValueError``.  Nothing here imports a Windows-only module at import time:
``new_iocp_event_loop`` imports ``asyncio.windows_events`` when called, so this module and
the wrapper are unit-tested on POSIX against a fake proactor
(``tests/core/test_iocp_wrapper.py``).
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Optional

from ..monitor.events import (
    KIND_ACCEPT, KIND_CONNECT, KIND_READ_PIPE, KIND_RECV, KIND_RECV_INTO, KIND_RECVFROM,
    KIND_RECVFROM_INTO, KIND_SEND, KIND_SENDFILE, KIND_SENDTO, KIND_WAIT, KIND_WRITE_PIPE,
    OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED,
)
from .base import check_faults


def _nbytes(kind: int, result: Any) -> int:
    """Bytes an IOCP op's result carries (what the OS transferred)."""
    if kind in (KIND_RECV, KIND_READ_PIPE):
        return len(result) if isinstance(result, (bytes, bytearray)) else int(result or 0)
    if kind == KIND_RECVFROM:
        return len(result[0])
    if kind == KIND_RECVFROM_INTO:
        return int(result[0])
    if kind in (KIND_RECV_INTO, KIND_SEND, KIND_SENDTO, KIND_SENDFILE, KIND_WRITE_PIPE):
        return int(result or 0)
    return 0


def _is_socket(obj: Any) -> bool:
    import socket
    return isinstance(obj, socket.socket)


class _RecordingCancel:
    """Replaces ``future.cancel`` on one op: records the request, then really cancels."""

    __slots__ = ("monitor", "rec", "cancel")

    def __init__(self, monitor: Any, rec: Any, cancel: Any) -> None:
        self.monitor = monitor
        self.rec = rec
        self.cancel = cancel

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        try:
            self.monitor.op_cancel(self.rec)
        except Exception:  # pragma: no cover - Monitor swallows its own errors
            pass
        return self.cancel(*args, **kwargs)


class InstrumentedIocpProactor:
    """Wraps an ``IocpProactor`` (or anything with its methods) and records every op."""

    backend_name = "iocp"

    def __init__(self, inner: Any, monitor: Any) -> None:
        self._inner = inner
        self.monitor = monitor
        self._loop: Any = None

    def __getattr__(self, name: str) -> Any:        # _unregister, _stop_serving, _cache...
        return getattr(self._inner, name)

    def set_loop(self, loop: Any) -> None:
        self._loop = loop
        self._inner.set_loop(loop)

    def select(self, timeout: Optional[float] = None) -> Any:
        return self._inner.select(timeout)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if self.monitor is not None:
                self.monitor.drain_at_close()

    # ------------------------------------------------------------------ recording
    def _submit(self, kind: int, obj: Any, requested: int, bufsize: int,
                method: Any, *args: Any) -> Any:
        mon = self.monitor
        if mon is None:
            return method(*args)
        try:
            fd = obj.fileno()
        except Exception:
            fd = -1
        try:
            fut = method(*args)
        except BaseException as exc:
            mon.op_failed_inline(kind, fd, requested, exc)
            raise
        if bufsize:
            rec = mon.op_start_pinned(kind, fd, requested, bufsize)
        else:
            rec = mon.op_start(kind, fd, requested)
        if rec is None:
            return fut
        try:
            fut.cancel = _RecordingCancel(mon, rec, fut.cancel)
        except AttributeError:   # a future type without __dict__: cancels are seen at the end
            pass
        fut.add_done_callback(functools.partial(self._ended, kind, rec))
        return fut

    def _ended(self, kind: int, rec: Any, fut: Any) -> None:
        mon = self.monitor
        if fut.cancelled():
            if not rec.cancel_t:
                mon.op_cancel(rec)
            mon.op_end(rec, OUTCOME_CANCELLED)
            return
        exc = fut.exception()
        if exc is not None:
            mon.op_end(rec, OUTCOME_FAILED, 0, type(exc).__name__)
            return
        try:
            nbytes = _nbytes(kind, fut.result())
        except Exception:
            nbytes = 0
        mon.op_end(rec, OUTCOME_COMPLETED, nbytes)

    # ------------------------------------------------------------------ the ops
    def recv(self, conn: Any, nbytes: int, flags: int = 0) -> Any:
        loop = self._loop
        if loop is not None and conn is getattr(loop, "_ssock", None):
            return self._inner.recv(conn, nbytes, flags)        # the self-pipe: not recorded
        kind = KIND_RECV if _is_socket(conn) else KIND_READ_PIPE
        return self._submit(kind, conn, nbytes, nbytes, self._inner.recv, conn, nbytes, flags)

    def recv_into(self, conn: Any, buf: Any, flags: int = 0) -> Any:
        kind = KIND_RECV_INTO if _is_socket(conn) else KIND_READ_PIPE
        n = len(buf)
        return self._submit(kind, conn, n, n, self._inner.recv_into, conn, buf, flags)

    def recvfrom(self, conn: Any, nbytes: int, flags: int = 0) -> Any:
        return self._submit(KIND_RECVFROM, conn, nbytes, nbytes, self._inner.recvfrom,
                            conn, nbytes, flags)

    def recvfrom_into(self, conn: Any, buf: Any, nbytes: int = 0, flags: int = 0) -> Any:
        # the selector backend's signature; IocpProactor's is (conn, buf, flags): trim instead
        if nbytes and nbytes < len(buf):
            buf = memoryview(buf)[:nbytes]
        n = len(buf)
        return self._submit(KIND_RECVFROM_INTO, conn, n, n, self._inner.recvfrom_into,
                            conn, buf, flags)

    def send(self, conn: Any, buf: Any, flags: int = 0) -> Any:
        kind = KIND_SEND if _is_socket(conn) else KIND_WRITE_PIPE
        n = len(buf)
        return self._submit(kind, conn, n, n, self._inner.send, conn, buf, flags)

    def sendto(self, conn: Any, buf: Any, flags: int = 0, addr: Any = None) -> Any:
        n = len(buf)
        return self._submit(KIND_SENDTO, conn, n, n, self._inner.sendto, conn, buf, flags, addr)

    def sendfile(self, sock: Any, file: Any, offset: int, count: int) -> Any:
        return self._submit(KIND_SENDFILE, sock, count, 0, self._inner.sendfile,
                            sock, file, offset, count)

    def accept(self, listener: Any) -> Any:
        return self._submit(KIND_ACCEPT, listener, 0, 0, self._inner.accept, listener)

    def connect(self, conn: Any, address: Any) -> Any:
        return self._submit(KIND_CONNECT, conn, 0, 0, self._inner.connect, conn, address)

    def accept_pipe(self, pipe: Any) -> Any:
        return self._submit(KIND_ACCEPT, pipe, 0, 0, self._inner.accept_pipe, pipe)

    def wait_for_handle(self, handle: Any, timeout: Optional[float] = None) -> Any:
        return self._submit(KIND_WAIT, handle, 0, 0, self._inner.wait_for_handle,
                            handle, timeout)


def new_iocp_event_loop(*, instrument: bool = True, faults: Iterable[str] = ()) -> Any:
    """Windows only: an ``asyncio.ProactorEventLoop`` on an instrumented ``IocpProactor``."""
    if check_faults(faults):
        raise ValueError("loopmon faults are emulated by the selector backend only; "
                         "on Windows the real IOCP proactor runs")
    from asyncio import windows_events

    from ..loop_methods import ProactorLoopMethodsMixin
    from ..monitor import Monitor
    from ..transports import DatagramTransport, ReadPipeTransport

    class IocpEventLoop(ProactorLoopMethodsMixin, windows_events.ProactorEventLoop):
        """The stdlib Windows proactor loop, counting delivered bytes."""

        def _make_datagram_transport(self, sock, protocol, address=None, waiter=None,
                                     extra=None):
            return DatagramTransport(self, sock, protocol, address, waiter, extra)

        def _make_read_pipe_transport(self, sock, protocol, waiter=None, extra=None):
            return ReadPipeTransport(self, sock, protocol, waiter, extra)

    monitor = Monitor(backend=InstrumentedIocpProactor.backend_name) if instrument else None
    proactor = InstrumentedIocpProactor(windows_events.IocpProactor(), monitor)
    loop = IocpEventLoop(proactor)
    loop.monitor = monitor
    return loop
