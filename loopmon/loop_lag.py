"""Loop lag: how late a periodic timer's callback runs, measured without taxing every iteration.

What is measured
----------------
While an instrumented loop runs, a timer expires every ``lag_interval`` seconds; when the loop
gets to its callback, ``now - expiry`` goes to ``Monitor.record_lag`` -- the delay any
callback due at that moment had, which is what the app's lag graph and the loop-lag detector
read.  A loop blocked for ten seconds reports one sample of about ten seconds (the earliest
expiry it missed), not two hundred.

Why a timerfd, not a timer in the loop's heap
---------------------------------------------
It was a heap timer (``call_at``).  But while *any* timer is scheduled, asyncio's
``_run_once`` reads the clock and looks at the heap top after every ``select``, so a program
with no timers of its own paid for the lag timer on every iteration, busy or idle: 1.07 k
instructions per round trip of the echo benchmark (callgrind), 1.4 points of the 5 %
overhead the core issue allows.  On Linux the timer is a ``timerfd`` instead: the kernel
keeps the schedule, the fd sits in the backend's selector like any ``add_reader`` fd, and the
loop pays only when it fires -- one readiness event, one ``read`` (which returns how many
expiries passed) and one callback per interval.  The expiries are on an absolute
``CLOCK_MONOTONIC`` schedule, the clock ``time.monotonic()`` reads, so the expiry a lag is
measured from is exact, not the time the timer was armed plus a guess.

Where there is no timerfd (macOS; a backend without ``add_handle``) the heap timer is used,
with its per-iteration cost.

Traps: the timer belongs to one ``run_forever``: armed when it starts, its fd unwatched and
closed when it ends (a stopped loop must not hold an fd that fires).  Python 3.13 has
``os.timerfd_create``; before it, the two libc calls go through ``ctypes`` (as the io_uring
backend's syscalls do).  The lag is never negative: the kernel may wake us a few
microseconds after the expiry, never before.
"""
from __future__ import annotations

import os
import sys
import time
from asyncio import events
from typing import Any, Optional

_monotonic = time.monotonic
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


def _libc_timerfd() -> Optional[Any]:
    """``open_periodic`` over libc's timerfd calls with ctypes, or None where there are none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError, ImportError):
        return None

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    class Itimerspec(ctypes.Structure):
        _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

    create.argtypes = [ctypes.c_int, ctypes.c_int]
    create.restype = ctypes.c_int
    settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(Itimerspec), ctypes.c_void_p]
    settime.restype = ctypes.c_int

    def split(seconds: float) -> Timespec:
        # via whole nanoseconds: rounding the fraction alone can give tv_nsec == 10**9 (EINVAL)
        sec, nsec = divmod(int(round(seconds * 1e9)), 1_000_000_000)
        return Timespec(sec, nsec)

    def open_periodic(first: float, interval: float) -> int:
        fd = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        spec = Itimerspec(split(interval), split(first))
        if settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, "timerfd_settime failed")
        return fd

    return open_periodic


def _os_timerfd() -> Optional[Any]:
    """Python 3.13+: ``open_periodic`` with os.timerfd_create/os.timerfd_settime."""
    if not hasattr(os, "timerfd_create"):
        return None

    def open_periodic(first: float, interval: float) -> int:
        fd = os.timerfd_create(time.CLOCK_MONOTONIC,
                               flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)
        try:
            os.timerfd_settime(fd, flags=os.TFD_TIMER_ABSTIME, initial=first, interval=interval)
        except OSError:
            os.close(fd)
            raise
        return fd

    return open_periodic


# (first expiry, interval) -> a non-blocking timerfd firing on that absolute schedule
_open_periodic = _os_timerfd() or _libc_timerfd()


class TimerfdLag:
    """The lag timer as a timerfd watched by the loop's backend (see the module docstring)."""

    def __init__(self, loop: Any, monitor: Any, interval: float) -> None:
        self._loop = loop
        self._monitor = monitor
        self._interval = interval
        self._expiry = _monotonic() + interval      # the earliest expiry not yet read
        self._fd = _open_periodic(self._expiry, interval)
        try:
            loop._proactor.add_handle(self._fd, events.Handle(self._fired, (), loop, None),
                                      False)
        except BaseException:
            os.close(self._fd)
            raise

    def _fired(self) -> None:
        try:
            count = int.from_bytes(os.read(self._fd, 8), sys.byteorder)
        except (BlockingIOError, InterruptedError):
            return                  # nothing expired after all (a spurious wake-up)
        except OSError as exc:
            self._monitor._note_error(exc)
            return
        now = _monotonic()
        self._monitor.record_lag(now - self._expiry)
        self._expiry += count * self._interval

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            self._loop._proactor.remove_handle(fd, False)
        finally:
            os.close(fd)


class HeapTimerLag:
    """The lag timer as a ``call_at`` timer: the fallback where there is no timerfd."""

    def __init__(self, loop: Any, monitor: Any, interval: float) -> None:
        self._loop = loop
        self._monitor = monitor
        self._interval = interval
        expected = loop.time() + interval
        self._handle = loop.call_at(expected, self._fired, expected)

    def _fired(self, expected: float) -> None:
        now = self._loop.time()
        self._monitor.record_lag(now - expected)
        expected = now + self._interval
        self._handle = self._loop.call_at(expected, self._fired, expected)

    def close(self) -> None:
        self._handle.cancel()


def start_lag_timer(loop: Any, monitor: Any, interval: float) -> Any:
    """Arm the loop's lag timer (``.close()`` disarms it): a timerfd where there is one."""
    if _open_periodic is not None and hasattr(loop._proactor, "add_handle"):
        try:
            return TimerfdLag(loop, monitor, interval)
        except OSError as exc:          # e.g. out of fds: lag is measured the old way
            monitor._note_error(exc)
    return HeapTimerLag(loop, monitor, interval)
