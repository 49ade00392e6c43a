"""Opt-in re-creations of two real proactor bugs, for the selector-emulated backend.

loopmon exists to make bugs of the overlapped-I/O kind visible; a demo needs them on tap.
Both faults are off unless asked for (``faults=`` or ``LOOPMON_FAULTS``) and both produce
the exact signature the original bug had, through the ordinary ``Monitor`` API:

* ``cancel-drops-data`` -- **bpo-33694**.  Pre-fix, ``pause_reading()`` cancelled an
  in-flight overlapped ``WSARecv``; when the kernel had already completed it, the completion
  carried bytes that the proactor ignored because the future was cancelled.  Here: when a
  pending receive's cancelled completion is delivered (next ``select()`` pass) and its
  socket already holds data, the backend reads that data and drops it.  The op ends
  ``OUTCOME_CANCELLED`` with ``nbytes`` = the bytes and ``FLAG_DISCARDED``: they count as
  received and discarded, never delivered.
* ``send-keeps-buffer`` -- **bpo-32710**.  When ``WSASend``/``ReadFile`` failed at once, the
  overlapped object kept its buffer forever.  Here: a send that fails at submission first
  pins its buffer (``op_start`` + ``buffer_pin``, as IOCP allocates before ``WSASend``),
  ends failed with ``keep_buffer=True``, and keeps a real copy of the data on the backend,
  so process memory grows in step with the failures.  Capped at 256 MiB so the program
  itself survives; beyond the cap failed sends release normally.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Iterable

from ..monitor.events import KIND_READ_PIPE, OUTCOME_FAILED
from .base import FAULT_CANCEL_DROPS_DATA, FAULT_SEND_KEEPS_BUFFER, check_faults
from .fdtable import _fd_or_minus_one

_LEAK_CAP = 256 * 1024 * 1024   # send-keeps-buffer stops leaking beyond this


class FaultEmulationMixin:
    """Fault state and behaviour for ``SelectorProactor`` (needs ``monitor``, ``_loop``)."""

    def _init_faults(self, faults: Iterable[str]) -> None:
        self.faults = check_faults(faults)
        self._drop_cancelled_data = FAULT_CANCEL_DROPS_DATA in self.faults
        self._keep_failed_send_buffers = FAULT_SEND_KEEPS_BUFFER in self.faults
        self._leaked: list[Any] = []       # send-keeps-buffer: copies never released
        self._leaked_bytes = 0

    def _release_leaks(self) -> None:
        """At close: the monitor drains every buffer, so the references go too."""
        self._leaked.clear()
        self._leaked_bytes = 0

    def _send_failed_inline(self, kind: int, obj: Any, buf: Any, total: int,
                            exc: BaseException) -> asyncio.Future:
        """A send failed at submission.  With ``send-keeps-buffer`` its buffer leaks (bpo-32710)."""
        if self._keep_failed_send_buffers and self._leaked_bytes + total <= _LEAK_CAP:
            # a real copy held for good (IOCP allocated one per submission): RSS shows it
            # even when the program sends the same bytes object every time
            self._leaked.append(bytearray(buf))
            self._leaked_bytes += total
            mon = self.monitor
            if mon is not None:
                rec = mon.op_start(kind, _fd_or_minus_one(obj), total)
                mon.buffer_pin(rec, total)      # IOCP allocates before WSASend fails...
                mon.op_end(rec, OUTCOME_FAILED, 0, type(exc).__name__, keep_buffer=True)
            fut = self._loop.create_future()
            fut.set_exception(exc)
            return fut
        return self._failed_inline(kind, obj, total, exc)

    @staticmethod
    def _read_and_drop(op: Any) -> int:
        """Fault ``cancel-drops-data``: the kernel had completed the receive; nobody reads it."""
        size = max(op._lm_n, 1)
        try:
            if op._lm_kind == KIND_READ_PIPE:
                data = os.read(op._lm_fd, size)
            else:
                data = op._lm_obj.recv(size)
        except (OSError, ValueError):
            return 0
        return len(data)
