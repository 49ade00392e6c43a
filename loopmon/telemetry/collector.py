"""The collector: one sampler per Monitor that drains, detects, samples and fans out.

Mechanism
---------
The monitored loop only appends events to its Monitor's bounded ring and bumps plain ints.
Everything else happens here, off the loop's thread -- on the agent's thread when an agent
serves the monitor (its asyncio loop drives the collector: ``drive_from``), else on a daemon
thread of the collector's own (``start``; the embedded widget's case).  Every
``sample_period`` (default 50 ms) it

1. drains the ring (single consumer: only the driving thread drains) the cheapest way that
   serves whoever needs the events (``drain.EventDrain``), in an ``EventBatch`` (per-code
   views made once, in C, shared by the consumers below) when a batch is needed at all,
2. feeds the events to the detectors that want them (``wants_events``, ``observe``) and asks
   every detector for alerts (``evaluate``); the detectors package is imported lazily
   (``detector_host``) and may be absent or broken -- its errors are counted
   (``detector_errors``) and never stop sampling,
3. takes ``monitor.snapshot()`` plus process figures (RSS, CPU %, threads, fds; read every
   ``PROCESS_FIGURES_EVERY``, repeated in the Samples between; see ``process_figures``),
4. appends the Sample to a bounded history, and
5. offers ``Alert``, ``OpEvents``, ``Sample`` and (every ``outstanding_every`` ticks)
   ``Outstanding`` messages to every Subscription -- with no subscriber, nothing is built.

Whichever thread drives it shares the GIL with the monitored loop, so its Python work, and
each of its wakeups, is the program's slowdown.  Between ticks it drains only as often as the
ring needs (``drain.DrainSchedule``: the ring's capacity against the event rate, never more
often than ``drain_period`` unless the ring fills faster); ``evaluate``, the Sample and the
fan-out happen once per ``sample_period``.  How a drain avoids building or touching events
nobody needs (with the C monitor core: most drains, nothing per event) is ``drain``'s
business.

Each subscriber has an **event budget** (op events/s, default 20 k,
``LOOPMON_EVENT_BUDGET``; see ``event_budget``): above it the events are thinned --
cancels, discards, failures and a window of whole op lifecycles per tick -- and the count
left out travels in that subscriber's ``Sample.counters["events_omitted"]`` (with
``event_budget``).  Subscribers with the same budget share the selected ``OpEvents``
messages (encoded once).

Subscriptions (``subscription``) are bounded queues: a consumer that falls behind gets drops,
counted and reported, never unbounded memory.  The first ``poll()`` returns the connect-time
backlog -- ``History`` (recent samples and alerts) and ``Outstanding`` -- so a late attach
starts with a filled graph.

History is kept in two tiers so several minutes stay cheap: the last ``recent_seconds`` at
full rate, and older samples (every ``decimate``-th) up to ``history_seconds``.

Traps
-----
* One Collector per Monitor (``for_monitor``): two drainers would split the event stream
  between them.  The registry is weak, so a dead loop's monitor can be collected once its
  collector has finished (its thread, or the driving loop's timer, holds it until then).
* It finishes after it has seen ``monitor.closed`` (one final tick first), telling the
  subscribers with ``Goodbye``.  Subscribing afterwards still works: backlog, then Goodbye.
* One driver at a time: ``drive_from`` is refused once the collector's own thread runs (and
  vice versa); ``stop()`` of a driven collector takes the final tick on the caller's thread
  (the driving loop may be stopping), ``_work_lock`` keeping the two from draining at once.
  A driving loop that goes away hands the collector back to a thread (``release_driver``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, Optional

from ..monitor import Monitor
from .detector_host import DetectorHost
from .drain import DrainSchedule, EventDrain
from .event_budget import EventSampler, budget_from_env, effective_budget
from .process_figures import ProcessFigures
from .messages import (PROTOCOL_MAJOR, PROTOCOL_MINOR, Alert, Goodbye, Hello, History,
                       OpEvents, Outstanding, Sample)
from .subscription import DEFAULT_SUBSCRIPTION_MAX_EVENTS, Subscription
from .wire import OP_EVENTS_PER_FRAME

log = logging.getLogger("loopmon.telemetry")

DEFAULT_SAMPLE_PERIOD = 0.05
DEFAULT_DRAIN_PERIOD = 0.01     # the shortest gap between drains (see drain.DrainSchedule)
DEFAULT_SUBSCRIPTION_MAXLEN = 2000      # messages
OUTSTANDING_CAP = 1000          # ops per Outstanding message (oldest first)
PROCESS_FIGURES_EVERY = 0.2     # seconds between reads of RSS, CPU %, threads, fds


def _fields(record: Any) -> dict:
    """A flat dataclass record (``Snapshot``, ``OpInfo``) as a dict: what its ``as_dict()``
    (``dataclasses.asdict``) gives, without a ``deepcopy`` per field -- that was half the
    cost of a tick.  Dict values are copied (the record may be shared); others are immutable."""
    try:
        d = dict(vars(record))
    except TypeError:
        return record.as_dict()
    for k, v in d.items():
        if type(v) is dict:
            d[k] = dict(v)
    return d


class Collector:
    """Samples one Monitor on a daemon thread and fans messages out to subscribers."""

    _registry: "weakref.WeakKeyDictionary[Monitor, Collector]" = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()

    @classmethod
    def for_monitor(cls, monitor: Monitor, **kwargs: Any) -> "Collector":
        """The one shared Collector of ``monitor`` (created on first use; kwargs apply then)."""
        with cls._registry_lock:
            col = cls._registry.get(monitor)
            if col is None:
                col = cls(monitor, **kwargs)
                cls._registry[monitor] = col
            return col

    def __init__(self, monitor: Monitor, *, sample_period: float = DEFAULT_SAMPLE_PERIOD,
                 history_seconds: float = 300.0, recent_seconds: float = 60.0,
                 decimate: int = 10, outstanding_every: float = 0.2,
                 detectors: Optional[list] = None, argv: Optional[list[str]] = None,
                 event_budget: Optional[int] = None,
                 drain_period: float = DEFAULT_DRAIN_PERIOD) -> None:
        if sample_period <= 0:
            raise ValueError("sample_period must be positive")
        self.monitor = monitor
        self.sample_period = float(sample_period)
        # the shortest gap between drains; how often it drains is the schedule's business
        self.drain_period = min(self.sample_period, max(float(drain_period), 1e-3))
        self._schedule = DrainSchedule(self.sample_period, self.drain_period, monitor)
        self._work_lock = threading.Lock()       # one drainer at a time (thread or tick())
        self.argv = list(sys.argv if argv is None else argv)
        # op events/s a subscriber is sent at most (0: unlimited); see event_budget.py
        self.event_budget = budget_from_env() if event_budget is None else max(0, int(event_budget))
        self._samplers: dict[int, EventSampler] = {}     # one per distinct budget in use
        n_recent = max(1, int(recent_seconds / sample_period))
        n_older = max(0, int((history_seconds - recent_seconds) / (sample_period * decimate)))
        self._recent: deque = deque(maxlen=n_recent)
        self._older: deque = deque(maxlen=max(1, n_older))
        self._decimate = max(1, decimate)
        self._aged = 0                       # samples that fell off the recent tier
        self._outstanding_ticks = max(1, round(outstanding_every / sample_period))
        self._detectors = DetectorHost(monitor, detectors)   # None: loopmon.detectors, lazily
        self.ticks = 0
        self.tick_errors = 0
        self._drain = EventDrain(monitor, self._detectors.observers, self._detectors.note_error)
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._driver: Any = None             # an asyncio loop driving us instead of a thread
        self._stop = threading.Event()
        self.finished = False
        self._finish_reason = ""
        self._stop_reason = "collector stopped"
        self._figures: tuple[int, float, int, int] = (0, 0.0, 0, 0)
        self._figures_due = float("-inf")
        self._process = ProcessFigures()

    # ---------------------------------------------------------------- public
    def hello(self) -> Hello:
        return Hello(protocol_major=PROTOCOL_MAJOR, protocol_minor=PROTOCOL_MINOR, pid=os.getpid(),
                     argv=[str(a) for a in self.argv], python=sys.version.split()[0],
                     backend=str(self.monitor.backend), sample_period=self.sample_period,
                     started_t=self.monitor.created_t, started_wall=self.monitor.created_wall)

    def start(self) -> "Collector":
        """Start draining on a thread of our own (unless a loop drives us, or we finished)."""
        with self._lock:
            if self._thread is None and self._driver is None and not self.finished:
                self._thread = threading.Thread(target=self._run, name="loopmon-collector",
                                                daemon=True)
                self._thread.start()
        return self

    def drive_from(self, loop: Any) -> bool:
        """Drain and tick as callbacks on ``loop`` -- an asyncio loop running on another
        thread, the agent's -- instead of on a thread of our own: a drain, a tick, the
        fan-out and the agent's write to its clients then happen in one wakeup of one thread
        (every wakeup takes the GIL from the monitored loop).  False, and nothing changes, if
        our own thread already runs, another loop drives us, or we finished."""
        with self._lock:
            if self.finished:
                return False
            if self._driver is loop:
                return True
            if self._thread is not None or self._driver is not None:
                return False
            self._driver = loop
            delay = self._schedule.start(time.monotonic())
        loop.call_soon_threadsafe(loop.call_later, delay, self._driven_step, loop)
        return True

    def release_driver(self) -> None:
        """The driving loop is going away: go on (if not finished) on a thread of our own."""
        with self._lock:
            driven, self._driver = self._driver is not None, None
        if driven and not self.finished:
            self.start()

    @property
    def driven(self) -> bool:
        """A loop drives the drains and ticks (``drive_from``), not our own thread."""
        return self._driver is not None

    def stop(self, reason: str = "collector stopped", timeout: float = 2.0) -> None:
        """Final tick, Goodbye to subscribers, thread ends (a driving loop stops driving)."""
        self._stop_reason = reason
        self._stop.set()
        with self._lock:
            t = self._thread
            driven, self._driver = self._driver is not None, None
        if t is not None:
            if t is not threading.current_thread():
                t.join(timeout)
            return
        if driven and not self.finished:
            # the final tick here, on the caller's thread: the driving loop may be stopping
            # (or waiting for us); _work_lock keeps it from draining at the same time
            try:
                self.tick(final=True)
            except Exception as exc:  # pragma: no cover - stopping must not raise
                self.tick_errors += 1
                log.debug("collector final tick failed: %r", exc)
        self._finish(reason)

    def subscribe(self, maxlen: int = DEFAULT_SUBSCRIPTION_MAXLEN,
                  max_events: int = DEFAULT_SUBSCRIPTION_MAX_EVENTS,
                  event_budget: Optional[int] = None, op_events: bool = True) -> Subscription:
        """A new Subscription whose first ``poll()`` returns History + Outstanding.

        It holds at most ``maxlen`` messages and ``max_events`` op events; beyond that new
        messages are dropped, counted, and reported with a ``Dropped`` message.
        ``event_budget`` (op events/s) may only lower the collector's budget; events left
        out are counted in its Samples' ``counters["events_omitted"]``.  ``op_events=False``:
        no OpEvents at all (a dashboard of samples; nothing is selected or copied for it)."""
        sub = Subscription(self, self.hello(), maxlen, max_events)
        sub.op_events = bool(op_events)
        sub.event_budget = effective_budget(self.event_budget, event_budget) if op_events else 0
        with self._lock:
            if sub.event_budget:
                sampler = self._samplers.get(sub.event_budget)
                if sampler is None:
                    sampler = EventSampler(sub.event_budget, self.monitor)
                    self._samplers[sub.event_budget] = sampler
                sub._sampler = sampler
                sub._omitted_base = sampler.omitted_total
            sub._queue.append(History(samples=self.history(), alerts=self.recent_alerts()))
            sub._queue.append(self._outstanding_message())
            if self.finished:
                sub._queue.append(Goodbye(self._finish_reason))
            else:
                self._subs.append(sub)
        if not self.finished:
            self.start()
        return sub

    def history(self) -> list[Sample]:
        return list(self._older) + list(self._recent)

    def recent_alerts(self, limit: int = 200) -> list[Alert]:
        alerts = [a for a in list(self.monitor.alerts) if isinstance(a, Alert)]
        return alerts[-limit:]

    @property
    def detector_errors(self) -> int:
        """Errors the detectors raised (counted, logged thrice, never raised into sampling)."""
        return self._detectors.errors

    @property
    def last_detector_error(self) -> str:
        return self._detectors.last_error

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    # ---------------------------------------------------------------- thread
    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            try:
                self._subs.remove(sub)
            except ValueError:
                pass

    def _run(self) -> None:
        delay = self._schedule.start(time.monotonic())
        while delay is not None:
            self._stop.wait(delay)
            delay = self._step()

    def _driven_step(self, loop: Any) -> None:
        """``_step`` as a callback of the driving loop, which it schedules again."""
        if self._driver is not loop or self.finished:
            return                     # stopped, or handed to our own thread meanwhile
        delay = self._step()
        if delay is not None and self._driver is loop:
            loop.call_later(delay, self._driven_step, loop)

    def _step(self) -> Optional[float]:
        """One wakeup: a tick when one is due, else a drain.  -> the delay until the next
        wakeup, or None when finished (stopped, or the monitored loop closed)."""
        stopping = self._stop.is_set()
        closed = self.monitor.closed
        now = time.monotonic()
        sched = self._schedule
        try:
            if stopping or closed or sched.tick_due(now):
                sched.ticked(now)
                self.tick(final=stopping or closed)
            else:
                with self._work_lock:
                    self._ingest(now)
        except Exception as exc:  # pragma: no cover - the thread must survive
            self.tick_errors += 1
            log.debug("collector tick failed: %r", exc)
        if stopping or closed:
            self._finish(self._stop_reason if stopping else "loop closed")
            return None
        return sched.delay(time.monotonic())

    def _finish(self, reason: str) -> None:
        with self._lock:
            if self.finished:
                return
            self._finish_reason = reason
            self.finished = True
            self._driver = None
            subs, self._subs = list(self._subs), []
        for sub in subs:
            sub._offer(Goodbye(reason))
            sub._wake()

    def _ingest(self, now: float, window: bool = False) -> None:
        """One drain (when the schedule says, and in ``tick``), with ``_work_lock`` held:
        ``EventDrain`` picks the cheapest way to serve the detectors and the streams."""
        with self._lock:
            streams = {sub._sampler for sub in self._subs if sub.op_events}
        sched = self._schedule
        queued = sched.queued()
        self._drain.ingest(now, streams, window)
        sched.drained(now, queued, self._drain.last_full)

    @property
    def events_forwarded(self) -> int:
        """Events drained while somebody streamed op events."""
        return self._drain.events_forwarded

    def tick(self, now: Optional[float] = None, final: bool = False) -> None:
        """One sampling period (public so tests and benchmarks can drive it by hand)."""
        with self._work_lock:
            self._tick(time.monotonic() if now is None else now, final)

    def _tick(self, now: float, final: bool) -> None:
        mon = self.monitor
        self._ingest(now, window=True)
        alerts = self._detectors.evaluate(now)
        snap = mon.snapshot()
        if self._figures_due <= now or final:
            # every PROCESS_FIGURES_EVERY, not every tick (see process_figures: GIL hand-offs)
            self._figures = self._process.read()
            self._figures_due = now + PROCESS_FIGURES_EVERY
        rss, cpu, threads, fds = self._figures
        counters = _fields(snap)
        counters["detector_errors"] = self.detector_errors
        sample = Sample(t=snap.time, wall=snap.wall, counters=counters, rss=rss,
                        cpu_percent=cpu, num_threads=threads, num_fds=fds)
        self._remember(sample)
        self.ticks += 1
        with self._lock:
            subs = list(self._subs)
            in_use = {sub.event_budget for sub in subs if sub.op_events}
            for budget in [b for b in self._samplers if b not in in_use]:
                del self._samplers[budget]          # stale state must not outlive its users
        pending = self._drain.take_pending()
        if not subs:
            return                                  # nobody to encode or copy anything for
        tail: list[Any] = []
        if final or self.ticks % self._outstanding_ticks == 0:
            tail.append(self._outstanding_message())
        # the events each budget sends (shared by the subscribers with that budget, so the
        # agent encodes each message once), and each subscriber's Sample with its count
        batches: dict[Optional[EventSampler], list] = {}
        samples: dict[tuple, Sample] = {}
        for sub in subs:
            sampler = sub._sampler
            msgs = batches.get(sampler) if sub.op_events else ()
            if msgs is None:
                selected = pending.get(sampler, ())
                msgs = batches[sampler] = [OpEvents(selected[i:i + OP_EVENTS_PER_FRAME])
                                           if len(selected) > OP_EVENTS_PER_FRAME
                                           else OpEvents(selected)
                                           for i in range(0, len(selected), OP_EVENTS_PER_FRAME)]
            sub_sample = sample
            if sampler is not None:
                key = (sampler.budget, sub._omitted_base)
                sub_sample = samples.get(key)
                if sub_sample is None:
                    sub_sample = samples[key] = dataclasses.replace(sample, counters=dict(
                        counters, event_budget=sampler.budget, events_omitted=sub.events_omitted))
            for msg in alerts:
                sub._offer(msg)
            for msg in msgs:
                sub._offer(msg)
            sub._offer(sub_sample)
            for msg in tail:
                sub._offer(msg)
            sub._wake()

    def _remember(self, sample: Sample) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen:
            old = recent[0]
            self._aged += 1
            if self._aged % self._decimate == 0:
                self._older.append(old)
        recent.append(sample)

    def _outstanding_message(self) -> Outstanding:
        try:
            ops = self.monitor.outstanding()[:OUTSTANDING_CAP]
            return Outstanding(t=time.monotonic(), ops=[_fields(op) for op in ops])
        except Exception:
            return Outstanding(t=time.monotonic(), ops=[])
