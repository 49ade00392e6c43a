"""``loopmon.ProactorEventLoop``: asyncio's proactor loop, complete on POSIX, instrumented.

``BaseProactorEventLoop`` is platform-neutral: give it a proactor and it runs transports,
servers and ``sock_*`` calls as completion-style operations.  This class gives it one (the
selector-emulated backend, ``loopmon.backends.selector``) and fills in what the base class
leaves to Windows' subclass or does not have at all:

* the **self-pipe reader** is started in ``run_forever`` (as ``windows_events`` does), so
  ``call_soon_threadsafe`` and signals wake the loop; its bytes carry signal numbers, which
  go to ``_process_self_data`` -- and its ops never show in the monitor;
* ``add_reader``/``add_writer`` through the backend's selector, scheduled like
  ``selector_events`` does; signals, subprocesses, pipes and Unix sockets come from
  ``PosixExtrasMixin`` (``loopmon.unix_extras``);
* every ``sock_*`` method with asyncio's own argument checks and, when instrumented,
  delivered-bytes accounting for what they return (``loopmon.loop_methods``; transports
  count theirs in ``loopmon.transports``);
* ``call_soon`` and the loop iteration without the stdlib's per-callback Python frames
  (``loopmon.loop_iteration``: same order, same error reporting, debug mode untouched);
* **loop lag**: while running instrumented, a timer expiring every ``lag_interval`` seconds
  measures how late its callback runs and records it with ``Monitor.record_lag``
  (``loopmon.loop_lag``: a timerfd on Linux, so that the timer costs nothing per iteration).

``instrument=False`` gives the same loop, same transports, with no monitor
(``loop.monitor is None``), for honest comparisons.
"""
from __future__ import annotations

import signal
import threading
import weakref
from asyncio import events, exceptions, proactor_events
from typing import Any, Iterable, Optional

from .backends.selector import SelectorProactor
from .loop_lag import start_lag_timer
from .loop_iteration import LeanIterationMixin
from .loop_methods import ProactorLoopMethodsMixin
from .monitor import Monitor
from .unix_extras import PosixExtrasMixin
_IS_MAIN_THREAD = threading.main_thread


def _fileobj_to_fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _current_wakeup_fd() -> int:
    """Read the process-wide wakeup fd without changing it (main thread only)."""
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


class ProactorEventLoop(LeanIterationMixin, PosixExtrasMixin, ProactorLoopMethodsMixin,
                        proactor_events.BaseProactorEventLoop):
    """A complete, optionally instrumented asyncio proactor event loop for POSIX."""

    def __init__(self, proactor: Any = None, *, instrument: bool = True,
                 faults: Iterable[str] = (), lag_interval: float = 0.05) -> None:
        if proactor is None:
            monitor = Monitor(backend=SelectorProactor.backend_name) if instrument else None
            proactor = SelectorProactor(monitor=monitor, faults=faults)
        self.monitor: Optional[Monitor] = getattr(proactor, "monitor", None)
        self._signal_handlers: dict = {}
        self._unix_server_sockets: dict = {}
        self._child_pidfds: dict = {}
        self._transports: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lag_interval = lag_interval
        self._lag_timer: Any = None
        main = threading.current_thread() is _IS_MAIN_THREAD()
        previous_wakeup_fd = _current_wakeup_fd() if main else -1
        super().__init__(proactor)
        if main:
            # the base class took the process-wide wakeup fd; give it back (see unix_extras)
            signal.set_wakeup_fd(previous_wakeup_fd)

    # ------------------------------------------------------------------ running
    def run_forever(self) -> None:
        # the base class's checks, before we touch the self-pipe reader of a running loop
        self._check_closed()
        self._check_running()
        try:
            assert self._self_reading_future is None
            self.call_soon(self._loop_self_reading)
            if self.monitor is not None and self._lag_interval > 0:
                self._lag_timer = start_lag_timer(self, self.monitor, self._lag_interval)
            super().run_forever()
        finally:
            if self._lag_timer is not None:
                self._lag_timer.close()
                self._lag_timer = None
            if self._self_reading_future is not None:
                self._self_reading_future.cancel()
                self._self_reading_future = None

    def _loop_self_reading(self, f: Any = None) -> None:
        try:
            if f is not None:
                data = f.result()  # may raise
                if data and self._signal_handlers:
                    self._process_self_data(data)
            if self._self_reading_future is not f:
                # run_forever() ended (and cancelled us) while this callback was queued
                return
            f = self._proactor.recv_unrecorded(self._ssock, 4096)
        except exceptions.CancelledError:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.call_exception_handler({
                "message": "Error on reading from the event loop self pipe",
                "exception": exc,
                "loop": self,
            })
        else:
            self._self_reading_future = f
            f.add_done_callback(self._loop_self_reading)

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        self._remove_all_signal_handlers()
        self._close_child_pidfds()
        main = threading.current_thread() is _IS_MAIN_THREAD()
        wakeup_fd = _current_wakeup_fd() if main else -1
        own_fd = self._csock.fileno() if self._csock is not None else -1
        super().close()
        if main and wakeup_fd not in (-1, own_fd):
            signal.set_wakeup_fd(wakeup_fd)     # it belongs to another loop: leave it be

    # ------------------------------------------------------------------ add_reader/add_writer
    def _ensure_fd_no_transport(self, fd: int) -> None:
        transport = self._transports.get(fd)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def add_reader(self, fd: Any, callback, *args) -> None:
        self._check_closed()
        fd = _fileobj_to_fd(fd)
        self._ensure_fd_no_transport(fd)
        self._proactor.add_handle(fd, events.Handle(callback, args, self, None), False)

    def remove_reader(self, fd: Any) -> bool:
        if self.is_closed():
            return False
        self._ensure_fd_no_transport(_fileobj_to_fd(fd))
        return self._proactor.remove_handle(_fileobj_to_fd(fd), False)

    def add_writer(self, fd: Any, callback, *args) -> None:
        self._check_closed()
        fd = _fileobj_to_fd(fd)
        self._ensure_fd_no_transport(fd)
        self._proactor.add_handle(fd, events.Handle(callback, args, self, None), True)

    def remove_writer(self, fd: Any) -> bool:
        if self.is_closed():
            return False
        self._ensure_fd_no_transport(_fileobj_to_fd(fd))
        return self._proactor.remove_handle(_fileobj_to_fd(fd), True)
