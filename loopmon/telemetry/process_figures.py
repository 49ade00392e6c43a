"""Process figures for the Samples: RSS, CPU %, threads and open fds, read cheaply.

Why not just psutil
-------------------
The collector reads these every ``PROCESS_FIGURES_EVERY`` (0.2 s) on its thread, which shares
the GIL with the monitored loop.  Time spent is small (psutil's ``oneshot()`` read of the four
figures is ~90 us), but psutil opens, stats, seeks, reads and closes four ``/proc`` files:
~30 system calls, and Python releases the GIL around every one of them.  Each release hands
the GIL to the busy loop thread and each re-acquisition takes it back -- a GIL hand-off that
costs the loop tens of microseconds of waiting, measured here (a background thread that
re-acquires the GIL 1000 times a second slowed an echo benchmark by ~8 %).  So on Linux the
figures come from one ``pread`` of ``/proc/self/stat`` on a descriptor kept open (RSS,
utime + stime, thread count: one system call, one hand-off), and the fd count -- a listing
of ``/proc/self/fd``, one GIL release per entry -- is refreshed only every ``FDS_EVERY``
seconds.  Elsewhere (or if ``/proc`` is unreadable) psutil does it, as before.

The figures mean what psutil's mean: RSS in bytes, CPU % of one core since the previous read
(user + system time of this process, not its children), threads of the process, open fds
(ours, the kept ``/proc/self/stat`` one, not counted).

Traps: ``/proc/self/stat``'s second field is the command name in parentheses and may itself
contain spaces or parentheses: fields are counted after the *last* ``)``.  A forked child
inherits the descriptor but must read its own ``/proc/self/stat``: the pid is checked.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

FDS_EVERY = 1.0           # seconds between counts of open fds (a directory listing)

Figures = tuple[int, float, int, int]     # rss bytes, cpu %, threads, open fds


class ProcessFigures:
    """``read()`` -> (rss, cpu_percent, num_threads, num_fds).  Never raises."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._fd: Optional[int] = None
        self._proc: Any = None
        self._page = 4096
        self._tick = 100
        self._last_cpu: Optional[tuple[float, float]] = None   # (wall, cpu seconds)
        self._fds = 0
        self._fds_due = float("-inf")
        if sys.platform.startswith("linux"):
            try:
                self._page = os.sysconf("SC_PAGE_SIZE")
                self._tick = os.sysconf("SC_CLK_TCK")
                self._fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
                self._read_stat()
            except (OSError, ValueError, IndexError):
                self._close()
        if self._fd is None:
            try:
                import psutil
                self._proc = psutil.Process(self._pid)
                self._proc.cpu_percent(interval=None)
            except Exception:
                self._proc = None

    def read(self) -> Figures:
        if os.getpid() != self._pid:       # a forked child: its own /proc/self/stat
            self._close()
            self.__init__()                # type: ignore[misc]
        if self._fd is not None:
            try:
                rss, cpu_s, threads = self._read_stat()
                now = time.monotonic()
                if now >= self._fds_due:
                    self._fds_due = now + FDS_EVERY
                    self._fds = len(os.listdir("/proc/self/fd")) - 1     # minus our stat fd
                last, self._last_cpu = self._last_cpu, (now, cpu_s)
                cpu = 0.0
                if last is not None and now > last[0]:
                    cpu = max(0.0, 100.0 * (cpu_s - last[1]) / (now - last[0]))
                return rss, round(cpu, 1), threads, self._fds
            except (OSError, ValueError, IndexError):
                pass
        return _psutil_figures(self._proc)

    def close(self) -> None:
        self._close()

    def _read_stat(self) -> tuple[int, float, int]:
        data = os.pread(self._fd, 4096, 0)
        fields = data[data.rindex(b")") + 2:].split()
        # after the name: state(3) ... utime(14) stime(15) ... num_threads(20) ... rss(24)
        cpu_s = (int(fields[11]) + int(fields[12])) / self._tick
        threads = int(fields[17])
        rss = int(fields[21]) * self._page
        if self._last_cpu is None:
            self._last_cpu = (time.monotonic(), cpu_s)
        return rss, cpu_s, threads

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _psutil_figures(proc: Any) -> Figures:
    if proc is None:
        return 0, 0.0, 0, 0
    try:
        with proc.oneshot():
            rss = proc.memory_info().rss
            cpu = proc.cpu_percent(interval=None)
            threads = proc.num_threads()
            fds = proc.num_fds() if hasattr(proc, "num_fds") else proc.num_handles()
        return rss, cpu, threads, fds
    except Exception:
        return 0, 0.0, 0, 0
