"""The proactor interface: what ``BaseProactorEventLoop`` asks of a backend.

A *proactor* is handed whole operations, not readiness.  The loop says "receive into this
buffer", "send these bytes", "accept a connection" and gets back a future that completes
when the operation does.  That is the completion model of Windows IOCP and of Linux
io_uring, and it is the model ``asyncio.proactor_events`` was written against.  loopmon's
backends all speak it, so the loop, the transports and the instrumentation never need to
know which one runs underneath.

The semantics every backend must honour (the ones IOCP has, and the ones that make its
bugs possible):

* **An op is in flight from submission until its own completion.**  Submission may
  complete it at once (``Monitor.op_inline``: one event, nothing outstanding) or leave it
  pending (``Monitor.op_start`` ... ``Monitor.op_end``).
* **A cancel is only a request.**  ``future.cancel()`` marks the future cancelled for the
  caller at once, records ``Monitor.op_cancel`` and asks the OS to stop; the op stays in the
  outstanding table until its completion arrives (cancelled, or -- the bpo-33694 trap --
  completed with data that nobody will deliver).
* **A buffer stays pinned until the completion.**  Whatever memory the op holds (the
  receive size, the unsent remainder of a send) is recorded with ``Monitor.buffer_pin`` and
  released by ``Monitor.op_end``; a backend that keeps it past the end must say so with
  ``keep_buffer=True`` (the bpo-32710 signature).
* **Sends complete their whole buffer.**  The proactor transports ignore the count a send
  returns, so a backend that can only do partial writes must keep going until all is sent.
* **Internal ops are not recorded.**  The loop's own self-pipe reader runs through the same
  backend but never shows up in the monitor.
* **close() ends everything.**  After ``close()`` the backend has cancelled every op it knew
  and called ``Monitor.drain_at_close()``: the monitor then shows nothing outstanding.

``ProactorBackend`` below is a ``typing.Protocol``: it documents the method set and lets a
type checker verify a backend; nothing inherits from it at run time.
"""
from __future__ import annotations

import socket
from typing import Any, Iterable, Optional, Protocol, runtime_checkable

#: Fault names a backend may implement (opt-in, never on by default).
FAULT_CANCEL_DROPS_DATA = "cancel-drops-data"   # re-creates bpo-33694
FAULT_SEND_KEEPS_BUFFER = "send-keeps-buffer"   # re-creates bpo-32710
KNOWN_FAULTS = frozenset({FAULT_CANCEL_DROPS_DATA, FAULT_SEND_KEEPS_BUFFER})


def check_faults(faults: Iterable[str]) -> frozenset:
    """Validate fault names: an unknown one is a ValueError, never silently ignored."""
    names = frozenset(f.strip() for f in faults if f and f.strip())
    unknown = names - KNOWN_FAULTS
    if unknown:
        raise ValueError(f"unknown loopmon fault(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(KNOWN_FAULTS))}")
    return names


@runtime_checkable
class ProactorBackend(Protocol):
    """The method set ``BaseProactorEventLoop`` and ``loopmon.ProactorEventLoop`` call.

    Every op method returns an ``asyncio.Future`` bound to the loop given to ``set_loop``.
    ``conn`` is a socket, or (for pipe transports) a file object / object with ``fileno()``.
    """

    #: ``Monitor`` or None for a bare backend; ``backend_name`` is what ``Monitor.backend`` says.
    monitor: Any
    backend_name: str

    def set_loop(self, loop: Any) -> None: ...
    def select(self, timeout: Optional[float] = None) -> list: ...
    def close(self) -> None: ...

    def recv(self, conn: Any, nbytes: int, flags: int = 0) -> Any: ...
    def recv_into(self, conn: Any, buf: Any, flags: int = 0) -> Any: ...
    def recvfrom(self, conn: socket.socket, nbytes: int, flags: int = 0) -> Any: ...
    def recvfrom_into(self, conn: socket.socket, buf: Any, nbytes: int = 0, flags: int = 0) -> Any: ...
    def send(self, conn: Any, buf: Any, flags: int = 0) -> Any: ...
    def sendto(self, conn: socket.socket, buf: Any, flags: int = 0, addr: Any = None) -> Any: ...
    def accept(self, listener: socket.socket) -> Any: ...
    def connect(self, conn: socket.socket, address: Any) -> Any: ...
    def sendfile(self, sock: socket.socket, file: Any, offset: int, count: int) -> Any: ...
    def _stop_serving(self, obj: Any) -> None: ...

    # --- what loopmon.ProactorEventLoop needs beyond BaseProactorEventLoop (POSIX) ---------
    def recv_unrecorded(self, conn: socket.socket, nbytes: int) -> Any:
        """``recv`` for the loop's self-pipe: never recorded in the monitor."""
    def wait_pipe_closed(self, pipe: Any) -> Any:
        """Completes with ``b''`` when the reader of the write pipe ``pipe`` goes away."""
    def add_handle(self, fd: int, handle: Any, writer: bool) -> None:
        """``loop.add_reader``/``add_writer``: schedule ``handle`` on readiness (replace, cancel old)."""
    def remove_handle(self, fd: int, writer: bool) -> bool:
        """``loop.remove_reader``/``remove_writer``: True if a handle was removed."""
