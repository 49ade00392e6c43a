"""Taking a monitor's events off its ring at the least cost for whoever needs them.

Why it matters
--------------
The thread that drives the collector (the agent's, or the collector's own) shares the GIL
with the monitored loop, and a busy echo server records ~350 k events/s (ten per round trip).  With the C monitor core an event is a slot in
a C ring until ``drain()`` builds its tuple -- on the collector's thread: building and later
freeing it cost ~190 ns per event there (in-process echo, ~1.9 us per round trip; reading a
slot is a cache miss, the loop thread wrote it from another core).  Any Python pass per event
on top (the detectors' ``observe``, the budget's selection) cost as much again.  So each
drain first asks who needs what, from plain-int counters, and takes the cheapest path:

* **Nobody needs ordinary events** (no subscriber streams op events, and no detector's
  ``wants_events(monitor, False)``): if the counters have not moved since two drains ago
  (``NotableGate.quiet_now``) nothing notable is queued, and ``drain_range(0, 0)`` takes
  every queued event without reading a slot; otherwise ``drain_notable()`` builds only the
  notable ones -- cancels, discards, failures, op ends with flags or an outcome other than
  completed -- for the detectors that want them.
* **One budgeted stream over its budget, nothing notable queued, no tracked op ended**: the
  sampler places its window of whole lifecycles first (``EventSampler.plan``) and the C
  core's ``drain_window(start, stop, n, window)`` selects the window's lifecycles straight
  from the ring slots and packs them into the OpEvents payload itself (``PackedEvents``:
  no event tuple at all; ``loopmon/monitor/_drain_window.h``) -- on a core without it,
  ``drain_range(start, stop, n)`` builds only those events and ``take_window`` selects --
  at the tick's drain only: a drain between ticks takes its events unread (``EventSampler.skip``,
  counted as omitted) and the budget's tokens carry over to the tick's window.  Every
  window costs a fixed ~40-100 us (the batch, its groups, the selection, a frame) besides
  its events; one per tick rather than one per drain saved ~0.2 us per echo round trip
  with the 8 Ki-slot ring, drained every 10 ms.
* **Otherwise** (several budgets, an unlimited subscriber, a notable drain, a detector that
  wants every event, a monitor without these primitives): ``drain()`` builds everything; the
  batch goes to the detectors that want it (``EventBatch.notable`` from the counters) and to
  each budget's ``select``.

Measured (in-process echo, ~35 k round trips/s, collector CPU per round trip, drains and
ticks): no client 4.1 us when every event was built and observed -> 0.2-0.7 us; a
default-budget client 6.1 us -> 0.9-1.1 us.  The C window: a tick's window of ~1.5 k events
took ~0.7-1 ms of GIL-held work in Python (build, select, pack) and takes ~30-100 us in C
(the echo benchmark's agent thread, per 1000 round trips with a client: 1.1-1.3 -> ~0.7 ms).  What is left is mostly per drain and per tick,
not per event -- and every GIL hand-off this thread causes costs the loop more than the
hand-off's own CPU (see ``agent``).

When to drain (``DrainSchedule``)
---------------------------------
Every drain is a wakeup of the draining thread, and every wakeup takes the GIL from the busy
loop thread.  A drain is needed at each tick (every ``sample_period``), and in between only
when the ring would otherwise fill: the schedule estimates the event rate from what each
drain found queued (``events_queued()``, read before it) and drains early only if the ring
would pass ``RING_FILL`` of its capacity before the next tick.  With a 64 Ki-slot ring
that is above ~650 k events/s at the default 50 ms: an echo benchmark (~420 k events/s) is
drained once per tick, where a fixed 10 ms period woke five times as often.  With 8 Ki slots
(the C core's starting size, to fit a core's L2 cache) that rate needs the short period
again.  The capacity is read at every decision: a monitor doubles its ring after an
overflow.

The rate is never assumed below ``BURST_RATE``: an idle program can start a burst at full
speed right after a drain, and a rate measured while it was idle would let the ring
overflow before the next one (measured: the echo benchmark's first burst lost 3-10 k events
to an 8 Ki ring drained once per tick).  So the long gap pays off only for a ring of more
than ~40 k slots; an 8 Ki ring is drained every ~10 ms, busy or idle.  A ring filling faster
than that is drained sooner, down to ``MIN_DRAIN_GAP``.  Two cases keep the short period
(``min_period``): a monitor that cannot say how much is queued, and a drain that built every
event (``EventDrain.last_full``: an unlimited subscriber, a detector that observes
everything, a notable drain) -- one long drain would hold the GIL, in one C call, for the
whole tick's worth of tuples.  What still overflows is counted by the monitor
(``events_dropped``).

Traps: the decision for the first two paths is taken *before* the drain, from counters read
just before it.  A notable event recorded between that read and the drain (the loop thread
can only get in if the GIL switches in those few bytecodes) is consumed unseen: its counter
still counts it, and the alerts rest on the counters; only its evidence (which op) is lost.
Lost-data's "gap above its threshold" may likewise be read a moment early.  The gate must
see every drain, whichever path took it (``after_drain``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

from .event_batch import EventBatch, NotableGate
from .event_budget import EventSampler
from .packed_events import PackedEvents
from .wire import OP_EVENTS_PER_FRAME


RING_FILL = 0.5            # drain early when the ring would pass this share of its capacity
TICK_EARLY = 0.001         # a timer that fires this close to a tick takes the tick
MIN_DRAIN_GAP = 0.002      # however fast the ring fills, drains are at least this far apart
BURST_RATE = 400_000       # events/s a program may start recording at any moment (echo: ~420 k)


class DrainSchedule:
    """When the next drain and tick are due (see "When to drain" above)."""

    def __init__(self, sample_period: float, min_period: float, monitor: Any) -> None:
        self.sample_period = sample_period
        self.min_period = min(min_period, sample_period)
        self._monitor = monitor
        queued = getattr(monitor, "events_queued", None)
        # None: the monitor cannot tell how full its ring is; drain every min_period
        self._queued: Optional[Callable[[], int]] = (
            queued if queued is not None and self._capacity() else None)
        self.next_tick = 0.0
        self._last_drain: Optional[float] = None
        self._rate = 0.0                     # events/s, a conservative estimate
        self._last_full = True

    def start(self, now: float) -> float:
        """The delay before the first drain (a tick, a sample period from ``now``)."""
        self.next_tick = now + self.sample_period
        self._last_drain = now
        return self.delay(now)

    def tick_due(self, now: float) -> bool:
        return now >= self.next_tick - TICK_EARLY

    def ticked(self, now: float) -> None:
        self.next_tick += self.sample_period
        if self.next_tick <= now:            # fell behind (GIL starvation): don't burst
            self.next_tick = now + self.sample_period

    def queued(self) -> int:
        """Events waiting in the ring (read before a drain; -1 if unknown)."""
        q = self._queued
        if q is None:
            return -1
        try:
            return q()
        except Exception:
            self._queued = None
            return -1

    def drained(self, now: float, queued: int, full: bool) -> None:
        """A drain at ``now`` took ``queued`` events; ``full``: it built every one."""
        last, self._last_drain = self._last_drain, now
        self._last_full = full
        if queued >= 0 and last is not None:
            rate = queued / max(now - last, 1e-3)
            self._rate = max(rate, self._rate * 0.5)

    def delay(self, now: float) -> float:
        """Seconds from ``now`` to the next drain (the tick's, or an earlier one).  Gaps are
        counted from the last drain's *start*: the drain itself, and the wait for the GIL
        before it, must not push every later drain back (the ring fills meanwhile)."""
        target = self.next_tick
        last = self._last_drain if self._last_drain is not None else now
        if self._queued is None or self._last_full:
            target = min(target, last + self.min_period)
        else:   # a quiet program may burst at any moment: assume at least BURST_RATE
            room = self._capacity() * RING_FILL
            target = min(target, last + max(MIN_DRAIN_GAP, room / max(self._rate, BURST_RATE)))
        return max(0.0, target - now)

    def _capacity(self) -> int:
        """The ring's size now (it may grow: a monitor doubles it after an overflow)."""
        try:
            return int(getattr(self._monitor, "ring_capacity", 0) or 0)
        except Exception:
            return 0


class EventDrain:
    """Drains one monitor every drain period; what each stream selected waits in ``pending``."""

    def __init__(self, monitor: Any, observers: Callable[[bool], list],
                 note_error: Callable[[BaseException], None]) -> None:
        self.monitor = monitor
        self._observers = observers          # notable -> the detectors that want the events
        self._note_error = note_error
        self._gate = NotableGate(monitor)
        self.pending: dict[Optional[EventSampler], Sequence] = {}   # selected since the last take
        self.events_forwarded = 0            # events drained while somebody streamed
        self.last_full = True                # the last drain built every event (``drain()``)

    def take_pending(self) -> dict[Optional[EventSampler], Sequence]:
        pending, self.pending = self.pending, {}
        return pending

    def ingest(self, now: float, streams: set, window: bool = True) -> None:
        """One drain.  ``streams``: the sampler of each budget streamed to (None: unlimited).
        ``window``: False for a drain between ticks -- a budgeted stream over its budget then
        takes nothing from it (its window comes from the tick's drain)."""
        mon = self.monitor
        self.last_full = False
        if (len(streams) == 1 and None not in streams
                and self._ranged(next(iter(streams)), now, window)):
            return
        drain_notable = None if streams else getattr(mon, "drain_notable", None)
        if drain_notable is not None and not self._observers(False):
            drain_range = getattr(mon, "drain_range", None)
            if drain_range is not None and self._gate.quiet_now():
                drain_range(0, 0)            # nothing notable queued: take it all unread
                self._gate.after_drain()
                return
            drained = drain_notable()
            self._gate.after_drain()
            if not drained:
                return
            notable = True
        else:
            drained = mon.drain()
            self.last_full = True
            if not drained:
                return
            notable = self._gate.after_drain()
        observers = self._observers(notable)
        if not observers and not streams:
            return      # nobody needs these events: drained only to keep the ring moving
        events = EventBatch(drained, notable)
        del drained
        for det in observers:
            try:
                det.observe(events)
            except Exception as exc:
                self._note_error(exc)
        for sampler in streams:
            self._add(sampler, sampler.select(events, now) if sampler is not None else events)
        if streams:
            self.events_forwarded += len(events)

    def _ranged(self, sampler: EventSampler, now: float, window: bool = True) -> bool:
        """Build only the sampler's window (``window`` False: nothing, unless all fits).
        False: this drain needs another path."""
        mon = self.monitor
        drain_range = getattr(mon, "drain_range", None)
        if (drain_range is None or self._observers(False) or not self._gate.quiet_now()
                or sampler.needs_whole_drain()):
            return False
        n = mon.events_queued()
        if not n:
            return True
        if not window:
            if not sampler.skip(n, now):
                return False         # everything fits: drained and sent whole
            drain_range(0, 0, n)     # over budget: the tick's drain places the window
            self._gate.after_drain()
            self.events_forwarded += n
            return True
        plan = sampler.plan(n, now)
        if plan is None:
            return False             # everything fits: drained and sent whole
        drain_window = getattr(mon, "drain_window", None)
        if drain_window is not None and plan[1] - plan[0] <= OP_EVENTS_PER_FRAME:
            # selected and packed in C, straight from the ring: no event tuple at all
            _, selected, payload, span = drain_window(plan[0], plan[1], n, plan[2])
            self._gate.after_drain()
            sampler.took_window(selected, span, n)
            if payload is not None:
                self._add(sampler, PackedEvents(payload, selected))
        else:
            first_seq, part = drain_range(plan[0], plan[1], n)
            self._gate.after_drain()
            self._add(sampler, sampler.take_window(first_seq, part, plan, n))
        self.events_forwarded += n
        return True

    def _add(self, sampler: Optional[EventSampler], selected: Sequence) -> None:
        """Queue a stream's selection: a list of tuples, or a window the C core packed
        (``PackedEvents``, kept packed when it is all this tick has for the stream)."""
        if selected:
            got = self.pending.get(sampler)
            if got is None:
                self.pending[sampler] = selected if type(selected) is PackedEvents else \
                    list(selected)
                return
            if type(got) is PackedEvents:      # more after a packed window: rare, as tuples
                self.pending[sampler] = got = list(got)
            got += selected
