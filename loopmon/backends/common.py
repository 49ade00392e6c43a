"""What the selector and io_uring backends share: the op future whose ``cancel()`` is a request.

Both backends make a pending op *be* its future (a ``asyncio.Future`` subclass whose slots hold
the backend's per-op state), so a completion needs no lookup from future to op.  The IOCP rule
that a cancel is only a request (see ``base.py``) lives in one place, ``CancelRequestFuture.cancel``:
the future is cancelled for the caller at once, and the backend is told once
(``backend._request_cancel(op)``), which records ``Monitor.op_cancel`` and ends the op on its own
schedule -- the next ``select()`` pass for the selector backend, the kernel's CQE for io_uring.

Traps:

* ``_lm_backend`` is cleared *before* the backend is told, so a second ``cancel()`` (or one from
  inside the backend's own handling) does not request twice.  A backend that completes an op
  normally leaves ``_lm_backend`` set: ``done()`` then stops the request.
* The class only adds a slot and a method: a subclass's ``__slots__`` must not repeat
  ``_lm_backend``, and nothing here runs per op except on a cancel (no extra call on the hot
  path -- slot access on a base class costs the same as on the subclass).
"""
from __future__ import annotations

import asyncio
from typing import Any


class CancelRequestFuture(asyncio.Future):
    """An op's future: ``cancel()`` cancels it at once and asks the owning backend to stop the op."""

    __slots__ = ("_lm_backend",)

    def cancel(self, msg: Any = None) -> bool:
        backend = self._lm_backend
        if backend is not None and not self.done():
            self._lm_backend = None
            backend._request_cancel(self)
        return super().cancel(msg)
