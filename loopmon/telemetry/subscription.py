"""``Subscription``: one consumer's bounded queue of the collector's messages.

A consumer that falls behind does not grow memory: when the queue holds ``maxlen`` messages,
or its ``OpEvents`` hold ``max_events`` events, new messages are dropped and counted, and
once it catches up it first receives a ``Dropped`` message saying how many it lost.

Threads: the collector's draining thread offers (``_offer``) and wakes (``_wake``); the
consumer polls from its own thread.  ``deque`` appends and pops are atomic under the GIL, and
each counter has a single writer (``_events_in`` the collector, ``_events_out`` the consumer).
The wakeup callback runs on whatever thread drives the collector -- its own, or the agent's
loop (``Collector.drive_from``): a callback that hands work to another loop must check which
thread it is on rather than assume.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from .event_budget import EventSampler
from .messages import Dropped, Hello, OpEvents

if TYPE_CHECKING:
    from .collector import Collector

DEFAULT_SUBSCRIPTION_MAX_EVENTS = 100_000   # op events held in OpEvents messages


class Subscription:
    """A bounded queue of messages for one consumer.  ``poll()`` never blocks."""

    def __init__(self, collector: "Collector", hello: Hello, maxlen: int,
                 max_events: int = DEFAULT_SUBSCRIPTION_MAX_EVENTS) -> None:
        self.hello = hello
        self.event_budget = 0            # op events/s this consumer is sent (0: all of them)
        self.op_events = True            # False: no OpEvents at all
        self._sampler: Optional[EventSampler] = None
        self._omitted_base = 0           # the sampler's omitted count when we subscribed
        self.maxlen = max(8, maxlen)
        self.max_events = max(1, max_events)
        # queued OpEvents tuples = _events_in - _events_out; each counter has a single writer
        self._events_in = 0
        self._events_out = 0
        self._collector = collector
        self._queue: deque = deque()
        self._pending_drops = 0          # dropped since the last Dropped message was queued
        self.dropped_total = 0
        self.closed = False
        self._wakeup: Optional[Callable[[], None]] = None

    def set_wakeup(self, callback: Optional[Callable[[], None]]) -> None:
        """``callback()`` runs on the collector's driving thread after each tick that queued
        messages (its own thread, or the agent's: see the module docstring)."""
        self._wakeup = callback

    def poll(self, max_items: int = 1 << 30) -> list[Any]:
        """Queued messages, oldest first (non-blocking; possibly empty)."""
        out = []
        q = self._queue
        n_events = 0
        try:
            while q and len(out) < max_items:
                msg = q.popleft()
                if type(msg) is OpEvents:
                    n_events += len(msg.events)
                out.append(msg)
        except IndexError:  # raced with nothing: single consumer, but be safe
            pass
        self._events_out += n_events
        return out

    @property
    def events_omitted(self) -> int:
        """Op events left out of this consumer's stream by its event budget so far."""
        s = self._sampler
        return s.omitted_total - self._omitted_base if s is not None else 0

    def close(self) -> None:
        self.closed = True
        self._collector._unsubscribe(self)
        self._queue.clear()

    # ---------------------------------------------------------------- collector side
    def _offer(self, msg: Any) -> None:
        n_events = len(msg.events) if type(msg) is OpEvents else 0
        if (len(self._queue) >= self.maxlen or
                (n_events and self._events_in - self._events_out + n_events > self.max_events)):
            self._pending_drops += 1
            self.dropped_total += 1
            return
        self._events_in += n_events
        if self._pending_drops:
            self._queue.append(Dropped(self._pending_drops, self.dropped_total))
            self._pending_drops = 0
        self._queue.append(msg)

    def _wake(self) -> None:
        cb = self._wakeup
        if cb is not None:
            try:
                cb()
            except Exception:  # a consumer whose loop closed: nothing to wake
                pass
