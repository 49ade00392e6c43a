"""The public entry points: ``new_event_loop()``, ``EventLoopPolicy`` and ``install()``.

Shaped like uvloop's, so switching a program over is one line::

    asyncio.Runner(loop_factory=loopmon.new_event_loop)      # 3.11+
    asyncio.run(main(), loop_factory=loopmon.new_event_loop)  # 3.12+
    loopmon.install(); asyncio.run(main())                    # any version (policy)

Faults (opt-in bug re-creations, see ``loopmon.backends.base``) come from the ``faults``
argument and from the ``LOOPMON_FAULTS`` environment variable (comma-separated), so a
program can be run faulty without editing it.  An unknown name is a ``ValueError``.
On Windows the loop is the stdlib IOCP proactor loop wrapped by ``loopmon.backends.iocp``.
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Iterable, Optional

from .backends.base import check_faults

FAULTS_ENV = "LOOPMON_FAULTS"
BACKEND_ENV = "LOOPMON_BACKEND"   # "selector" (default) or "io_uring"


def _faults(faults: Iterable[str]) -> frozenset:
    if isinstance(faults, str):
        faults = [faults]
    env = os.environ.get(FAULTS_ENV, "")
    return check_faults(list(faults) + env.split(","))


def new_event_loop(*, instrument: bool = True, faults: Iterable[str] = (),
                   backend: Optional[str] = None) -> Any:
    """A new loopmon proactor loop; ``loop.monitor`` is its ``Monitor`` (None if bare).

    ``backend`` (or env ``LOOPMON_BACKEND``): "selector" (default) or "io_uring".  io_uring
    unavailable is an error when asked by argument, a warning and the selector when by env.
    """
    names = _faults(faults)
    if sys.platform == "win32":  # pragma: no cover - cannot run here
        from .backends.iocp import new_iocp_event_loop
        return new_iocp_event_loop(instrument=instrument, faults=names)
    from .loop import ProactorEventLoop
    name = backend if backend is not None else os.environ.get(BACKEND_ENV, "").strip()
    if name and name != "selector":
        from .backends.io_uring import new_proactor
        proactor = new_proactor(name, instrument=instrument, faults=names,
                                explicit=backend is not None)
        if proactor is not None:
            return ProactorEventLoop(proactor)
    return ProactorEventLoop(instrument=instrument, faults=names)


class EventLoopPolicy(asyncio.events.BaseDefaultEventLoopPolicy):
    """Event loop policy whose loops are loopmon loops (``install()`` sets it)."""

    def __init__(self, *, instrument: bool = True, faults: Iterable[str] = (),
                 backend: Optional[str] = None) -> None:
        super().__init__()
        self._instrument = instrument
        self._faults = tuple(_faults(faults))
        self._backend = backend

    def _loop_factory(self) -> Any:
        return new_event_loop(instrument=self._instrument, faults=self._faults,
                              backend=self._backend)


def install(*, instrument: bool = True, faults: Iterable[str] = (),
            backend: Optional[str] = None) -> EventLoopPolicy:
    """Make loopmon's loop the default for ``asyncio.run()`` / ``new_event_loop()``."""
    policy = EventLoopPolicy(instrument=instrument, faults=faults, backend=backend)
    asyncio.set_event_loop_policy(policy)
    return policy
