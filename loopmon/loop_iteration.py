"""One loop iteration and ``call_soon`` without the stdlib's per-callback Python frames.

Every callback an asyncio loop runs passes through two pieces of ``base_events`` that are
pure Python: ``call_soon`` (which calls ``_check_closed``, ``_call_soon``, ``Handle.__init__``
and ``loop.get_debug()`` -- four frames to append one object to a deque) and ``_run_once``
(which calls ``Handle._run`` -- one more frame -- around ``Context.run``).  On a stream
workload every chunk costs two of each: the transport's read handle and the task wake-up
that the reader's future schedules through ``loop.call_soon``.  Those frames weigh as much
as the whole I/O path of a receive, so ``ProactorEventLoop`` takes them out:

* ``call_soon`` builds the ``Handle`` itself (``object.__new__`` and its slots, exactly
  what ``Handle.__init__`` sets when the loop is not in debug mode) and appends it.  In
  debug mode, or on a closed loop, it is the stdlib's ``call_soon`` (thread and callback
  checks, source tracebacks, the "Event loop is closed" error).
* ``_run_once`` is ``BaseEventLoop._run_once`` line for line (timer heap clean-up, the
  timeout, ``select``, due timers, then the callbacks that were ready) except that a
  plain ``Handle``/``TimerHandle`` is run in place: ``Context.run`` inside the same
  ``try``/``except`` as ``Handle._run``, and a failing callback reported with the same
  context dict (``_report_callback_error`` mirrors ``Handle._run`` of the running Python,
  whose 3.13 form also passes ``debug=`` to the callback formatter).  Debug mode, and any
  ``Handle`` subclass (which may override ``_run``), take the stdlib's path.

Traps: ``self._debug`` is read per callback, as the stdlib does (a callback may turn
debug mode on); ``SystemExit``/``KeyboardInterrupt`` leave the rest of the ready queue in
place, as they do with ``Handle._run``; and ``handle = None`` at the end breaks the cycle
an exception would keep, as in the stdlib.
"""
from __future__ import annotations

import contextvars
import heapq
import time
from asyncio import base_events, events, format_helpers
from asyncio.log import logger

_Handle = events.Handle
_TimerHandle = events.TimerHandle
_new_handle = object.__new__
_copy_context = contextvars.copy_context
_base_call_soon = base_events.BaseEventLoop.call_soon
_format_callback_source = format_helpers._format_callback_source
_format_handle = base_events._format_handle
# 3.13's Handle._run passes debug=loop.get_debug() to the formatter; earlier ones do not
_FORMAT_WITH_DEBUG = "get_debug" in _Handle._run.__code__.co_names
_MIN_SCHEDULED_TIMER_HANDLES = base_events._MIN_SCHEDULED_TIMER_HANDLES
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION
MAXIMUM_SELECT_TIMEOUT = base_events.MAXIMUM_SELECT_TIMEOUT
_monotonic = time.monotonic
_BASE_TIME = base_events.BaseEventLoop.time


def _report_callback_error(handle: events.Handle, exc: BaseException) -> None:
    """The ``except BaseException`` clause of ``Handle._run``, for a handle run in place."""
    if _FORMAT_WITH_DEBUG:
        cb = _format_callback_source(handle._callback, handle._args,
                                     debug=handle._loop.get_debug())
    else:
        cb = _format_callback_source(handle._callback, handle._args)
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


class LeanIterationMixin:
    """``call_soon`` and ``_run_once`` for a ``BaseEventLoop`` subclass (module docstring)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # loop.time() for _run_once: time.monotonic itself when time() is the stdlib's, so
        # no Python frame per read.  While any timer is scheduled every iteration reads the
        # clock, so this is per iteration, not per timer (the loop-lag timer is a timerfd
        # where it can be, for that reason: loopmon.loop_lag).  A subclass's own time() is
        # honoured (bound here once).
        self._lm_clock = _monotonic if type(self).time is _BASE_TIME else self.time

    def call_soon(self, callback, *args, context=None):
        if self._debug or self._closed:
            return _base_call_soon(self, callback, *args, context=context)
        handle = _new_handle(_Handle)
        handle._context = _copy_context() if context is None else context
        handle._loop = self
        handle._callback = callback
        handle._args = args
        handle._cancelled = False
        handle._repr = None
        handle._source_traceback = None
        self._ready.append(handle)
        return handle

    def _run_once(self):
        """Run one full iteration of the event loop (``BaseEventLoop._run_once``)."""
        scheduled = self._scheduled
        sched_count = len(scheduled)
        if (sched_count > _MIN_SCHEDULED_TIMER_HANDLES and
                self._timer_cancelled_count / sched_count >
                _MIN_CANCELLED_TIMER_HANDLES_FRACTION):
            # Remove delayed calls that were cancelled if their number is too high
            new_scheduled = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    new_scheduled.append(handle)
            heapq.heapify(new_scheduled)
            self._scheduled = scheduled = new_scheduled
            self._timer_cancelled_count = 0
        else:
            # Remove delayed calls that were cancelled from head of queue.
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                handle = heapq.heappop(scheduled)
                handle._scheduled = False

        ready = self._ready
        timeout = None
        if ready or self._stopping:
            timeout = 0
        elif scheduled:
            # Compute the desired timeout.
            timeout = scheduled[0]._when - self._lm_clock()
            if timeout > MAXIMUM_SELECT_TIMEOUT:
                timeout = MAXIMUM_SELECT_TIMEOUT
            elif timeout < 0:
                timeout = 0

        event_list = self._selector.select(timeout)
        if event_list:
            self._process_events(event_list)
        # Needed to break cycles when an exception occurs.
        event_list = None

        # Handle 'later' callbacks that are ready.
        if scheduled:
            end_time = self._lm_clock() + self._clock_resolution
            while scheduled:
                handle = scheduled[0]
                if handle._when >= end_time:
                    break
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)

        # Run the callbacks that are ready now (not those they schedule: next iteration).
        popleft = ready.popleft
        for _ in range(len(ready)):
            handle = popleft()
            if handle._cancelled:
                continue
            if self._debug:
                try:
                    self._current_handle = handle
                    t0 = self.time()
                    handle._run()
                    dt = self.time() - t0
                    if dt >= self.slow_callback_duration:
                        logger.warning("Executing %s took %.3f seconds",
                                       _format_handle(handle), dt)
                finally:
                    self._current_handle = None
            elif type(handle) is _Handle or type(handle) is _TimerHandle:
                # Handle._run, in place (no argument tuple for 0 or 1 arguments: the common
                # cases, the transports' read handles and the tasks' wake-ups)
                args = handle._args
                try:
                    if not args:
                        handle._context.run(handle._callback)
                    elif len(args) == 1:
                        handle._context.run(handle._callback, args[0])
                    else:
                        handle._context.run(handle._callback, *args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    _report_callback_error(handle, exc)
            else:
                handle._run()
        handle = None  # Needed to break cycles when an exception occurs.
