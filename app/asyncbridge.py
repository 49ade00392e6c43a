"""Where the app's asyncio code runs: the qasync loop, inside Qt's own event loop.

The remote feed is asyncio code (``loopmon.client``).  In the desktop app ``app.main`` makes a
``qasync.QEventLoop`` the thread's running loop for its whole life, so coroutines simply become
tasks on it.  An *embedding* application may not use asyncio at all — it just calls
``QApplication.exec()`` — and a widget must still be able to ``attach()``.  For that case
``qt_asyncio_loop()`` lazily creates one shared ``QEventLoop(already_running=True)``: qasync's
mode for a Qt loop that is already (or about to be) spinning; its timers and socket notifiers
are ordinary Qt objects, so they run whenever Qt processes events (``exec()``, a modal dialog,
pytest-qt's ``qtbot.wait``).

Traps:
* qasync picks its Qt binding at import from ``sys.modules``: import PySide6 first (we do), or
  an installed PyQt5 would win.
* ``already_running=True`` marks the loop as *the running loop of this thread*; a later
  ``asyncio.run()`` in the same thread (a test suite does that) then refuses to start.
  ``release_shared_loop()`` undoes it; the GUI tests call it in teardown.
* The shared loop is created on first ``attach()``, never at import: importing the widgets has
  no application-wide side effect.
* An app that made a ``qasync.QEventLoop`` its thread's loop but calls ``attach()`` before
  ``run_forever()`` gets *that* loop (the task starts when it runs), not a second one: two
  qasync loops in one thread hand futures to each other and fail with "attached to a
  different loop".
"""
from __future__ import annotations

import asyncio
from typing import Optional

from PySide6.QtWidgets import QApplication

_shared: Optional[asyncio.AbstractEventLoop] = None


def qt_asyncio_loop() -> asyncio.AbstractEventLoop:
    """The asyncio loop to schedule the app's coroutines on (see the module docstring)."""
    global _shared
    running = asyncio._get_running_loop()
    if running is not None:
        return running
    import qasync   # after PySide6, so qasync binds to it
    # a qasync loop set for this thread but not started yet (app code that attaches before
    # run_forever): tasks created on it now run once it starts.  Read without get_event_loop(),
    # which would create a loop as a side effect.
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    pending = getattr(local, "_loop", None)
    if isinstance(pending, qasync.QEventLoop) and not pending.is_closed():
        return pending
    if _shared is None or _shared.is_closed():
        app = QApplication.instance()
        if app is None:
            raise RuntimeError("create a QApplication before attaching a LoopMonitorWidget")
        _shared = qasync.QEventLoop(app, already_running=True)
    return _shared


def release_shared_loop() -> None:
    """Forget the shared loop and clear this thread's running-loop mark (tests, shutdown)."""
    global _shared
    loop, _shared = _shared, None
    if loop is None:
        return
    if asyncio._get_running_loop() is loop:
        asyncio.events._set_running_loop(None)
    try:
        for task in asyncio.all_tasks(loop):
            task.cancel()
    except RuntimeError:
        pass
