"""The event budget: how many op events per second a client is sent, and which ones.

Why
---
Every event streamed costs the monitored program: the agent's threads encode it (~0.3 us) and
write it while holding the GIL the program's loop thread needs, and a client decoding on the
same machine competes for the CPU.  A busy echo server records ~170 k events/s; streaming all
of them made it ~1.3x slower.  So each client gets a budget (default ``DEFAULT_EVENT_BUDGET``
events/s; ``LOOPMON_EVENT_BUDGET`` in the program's environment changes it, 0 = unlimited; a
client may ask for less in its hello).  Below the budget every event is sent, as before.
Above it the tick's events are *thinned*, and the number left out is counted and reported
in the client's ``Sample.counters["events_omitted"]`` so a viewer can say "sampled".

What is kept (in stream order), most important first
---------------------------------------------------
1. **Always**: cancels, discards, inline failures and op ends with flags (cancel requested,
   late completion, discarded, drained at close) -- the bug signatures the app and the
   detectors' evidence point at -- and the submit (and pin) of an op cancelled in the same
   drain, so its span can be drawn.  (Capped at the allowance: a storm of cancels is thinned
   too.)  Looked for only when the monitor's counters say the drain may hold one
   (``EventBatch.notable``): most drains have none.
2. **The ends of ops sent earlier and still open**: ops in flight when the sampler started
   (the client has them from its ``Outstanding`` backlog) and cancelled ones.  Which of them
   ended is one C-level set difference with the monitor's in-flight table; the drain is
   searched only when one did.
3. **A window of whole lifecycles**: the allowance left is spent on a window of that many
   consecutive events at a random place in the drain.  Its inline ops travel, and every op
   that went pending in the window *and ended within its tail* travels whole: submit,
   buffer pin, end, buffer release.  The tail is half the window in every ``LEARN_EVERY``-th
   window, which measures the spans (end seq - submit seq) of the ops it closes; the others
   get ``SPAN_MARGIN`` x the longest span that one saw (at least ``MIN_TAIL`` events): in
   the echo benchmark ~100 events where half the window was ~500, and every event of a tail
   is built and looked at.  An op that started before
   the window, or that is still open after the tail, is left out entirely -- so the app never
   sees half a lifecycle it cannot close (long-waiting ops reach it through ``Outstanding``;
   the sample leans to short ops).  A window is a C slice, and only it is looked at: the
   sampler's cost no longer grows with the event rate (in-process echo at ~300 k events/s:
   1.7 -> 0.5-0.8 us per round trip; the old every-k-th-op sampling made per-code passes
   over the whole drain).  On a monitor with ``drain_range`` the window is placed *before*
   the drain (``plan``) and only its events are ever built (see ``drain``); a tail of half
   the window rather than a whole one cut that path from ~1.3-1.8 to ~0.9-1.1 us per round
   trip of collector CPU.  With the C core, the window's selection (``_lifecycles``) runs in
   C on the ring's slots (``drain_window``, which also packs the result; ``took_window``
   does the accounting here): the same events, and no tuple built.

Budget accounting is a token bucket (refilled at the budget rate, up to half a second's worth),
so a quiet program's bursts go out whole; a window that closed more lifecycles than its room
borrows from the next drain's tokens.

Traps: sequence numbers are consecutive within a drain, and an op's id is its submit's seq, a
buffer's id its pin's seq: that is what lets a window tell "started here" apart without a
table.  If events are lost (ring overflow) an end may never come and ``_sent_open`` would
grow: a tracked op seen ended whose end is not in the next drain either is forgotten, and
the set is trimmed to the monitor's in-flight ops when it gets large.
"""
from __future__ import annotations

import os
import random
from itertools import chain, compress, repeat
from operator import itemgetter, ne, sub
from typing import Any, Optional

from ..monitor.events import (EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL, EV_OP_END,
                              EV_OP_INLINE, EV_OP_SUBMIT, OUTCOME_COMPLETED)
from .event_batch import EventBatch

DEFAULT_EVENT_BUDGET = 20_000        # events/s per client
BURST_SECONDS = 0.5                  # the bucket holds this much of the budget
_SENT_OPEN_TRIM = 200_000
#: every LEARN_EVERY-th window is built with the full tail (half the window) to measure how
#: long the sampled ops take; the others get a tail of SPAN_MARGIN x the longest span seen
LEARN_EVERY = 8
SPAN_MARGIN = 2
MIN_TAIL = 32
#: in-flight ops whose ends are sent although the sampler never saw them start: the ones the
#: client knows from its ``Outstanding`` backlog (the collector lists at most this many).
#: ``needs_whole_drain`` checks them against the in-flight table every drain.
SEEDED_OPS = 1000

_seq_of = itemgetter(0)
_op_of = itemgetter(3)               # op id of submit / cancel / end / discard
_pin_op_of = itemgetter(4)           # op id of a buffer pin
_col7 = itemgetter(7)                # inline: outcome; end: flags


def budget_from_env(default: int = DEFAULT_EVENT_BUDGET) -> int:
    """``LOOPMON_EVENT_BUDGET`` (events/s, 0 = unlimited), or ``default``."""
    raw = os.environ.get("LOOPMON_EVENT_BUDGET", "").strip()
    if not raw:
        return default
    try:
        return max(0, int(float(raw)))
    except ValueError:
        return default


def effective_budget(agent_budget: int, requested: Optional[int]) -> int:
    """A client's budget: what it asked for, never above the agent's (0 = unlimited)."""
    if requested is None or requested <= 0:
        return agent_budget
    return requested if agent_budget <= 0 else min(requested, agent_budget)


class EventSampler:
    """Thins each tick's events to one budget.  One per distinct budget, shared by its clients."""

    def __init__(self, budget: int, monitor: Any = None) -> None:
        self.budget = int(budget)
        self.capacity = max(1.0, self.budget * BURST_SECONDS)
        self.tokens = self.capacity
        self.omitted_total = 0            # events left out since this sampler started
        self.sent_total = 0
        self._last_t: Optional[float] = None
        self._monitor = monitor
        # picked ops whose end has not been seen; seeded with the ops already in flight (the
        # client has them from its Outstanding backlog, so their ends are worth sending)
        self._sent_open: set[int] = set()
        self._rng = random.Random(0x10097)
        self._missing: set[int] = set()   # ops seen ended whose end was not in the last drain
        self._windows = 0                 # windows placed so far
        self._span: Optional[int] = None  # longest submit-to-end distance (events) last learnt
        self._learning = False            # the window being taken has the full tail
        if monitor is not None:
            try:   # the client's Outstanding backlog lists the oldest SEEDED_OPS of them
                self._sent_open.update(op.op_id for op in monitor.outstanding()[:SEEDED_OPS])
            except Exception:
                pass

    def select(self, batch: EventBatch, now: float) -> list:
        """The events of ``batch`` this budget sends (the batch itself when all fit)."""
        self._refill(now)
        n = len(batch)
        if not n:
            return batch
        if n <= self.tokens:
            self.tokens -= n
            self.sent_total += n
            self._track(batch.group(EV_OP_SUBMIT), batch.group(EV_OP_END))
            return batch
        out = self._thin(batch)
        self.tokens = max(-self.capacity, self.tokens - len(out))
        self.sent_total += len(out)
        self.omitted_total += n - len(out)
        return out

    # ------------------------------------------------------------------ ranged drains
    # With a monitor that offers ``drain_range(start, stop, max_items)`` the collector asks
    # the sampler *before* draining where its window goes, and only the window's events are
    # ever built (see ``drain``).  Valid only for a drain with nothing notable in it and
    # no tracked op ended (``needs_whole_drain``): the other two parts need the whole drain.
    def needs_whole_drain(self) -> bool:
        """Did an op sent earlier and still open end?  Then its end must be searched for."""
        sent_open = self._sent_open
        if not sent_open:
            return False
        not_in_flight = getattr(self._monitor, "not_in_flight", None)
        if not_in_flight is None:
            return True
        return bool(not_in_flight(sent_open))

    def plan(self, n: int, now: float) -> Optional[tuple[int, int, int]]:
        """Where the window goes among the ``n`` queued events: ``(start, stop, room)``
        positions to build (the window and its tail), or None when all ``n`` fit."""
        self._refill(now)
        if n <= self.tokens:
            return None
        m = min(int(max(self.tokens, 1.0)), n)
        i = self._rng.randrange(n - m + 1)
        return i, i + m + min(n - i - m, self._tail(m)), m

    def skip(self, n: int, now: float) -> bool:
        """A drain of ``n`` events between ticks: True if over the budget -- then none of
        them is sent (counted as omitted; the tokens carry over to the tick's window) --,
        False if all fit (sent whole, the usual way)."""
        self._refill(now)
        if n <= self.tokens:
            return False
        self.omitted_total += n
        return True

    def take_window(self, first_seq: int, part: list, plan: tuple[int, int, int],
                    n: int) -> list:
        """The events sent out of a ranged drain of ``n`` events: ``part`` is what was built
        (positions ``plan[0]:plan[1]``), ``first_seq`` the seq of the first event taken."""
        start, _, m = plan
        out = self._lifecycles(EventBatch(part, notable=False), first_seq + start + m) if part \
            else []
        out.sort(key=_seq_of)
        self._account(len(out), n)
        return out

    def took_window(self, selected: int, span: Optional[int], n: int) -> None:
        """The C core selected (and packed) the window itself (``drain_window``, same
        selection as ``take_window``): ``selected`` events sent out of a ranged drain of
        ``n``; ``span`` the longest end seq - op id among the ops it closed (None: none)."""
        if self._learning and span is not None:
            self._span = span
            self._learning = False
        self._account(selected, n)

    def _account(self, sent: int, n: int) -> None:
        self.tokens = max(-self.capacity, self.tokens - sent)
        self.sent_total += sent
        self.omitted_total += n - sent

    # ------------------------------------------------------------------ internals
    def _refill(self, now: float) -> None:
        if self._last_t is not None:
            self.tokens = min(self.capacity,
                              self.tokens + self.budget * max(0.0, now - self._last_t))
        self._last_t = now

    def _track(self, sent_submits: list, ends: list) -> None:
        sent_open = self._sent_open
        if sent_submits:
            sent_open.update(map(_op_of, sent_submits))
        if ends:
            sent_open.difference_update(map(_op_of, ends))
        if len(sent_open) > _SENT_OPEN_TRIM:
            try:   # ends were lost (ring overflow): keep only ops still in flight
                sent_open.intersection_update(op.op_id for op in self._monitor.outstanding())
            except Exception:
                sent_open.clear()

    def _thin(self, batch: EventBatch) -> list:
        allowance = max(self.tokens, 1.0)
        out: list = self._notable(batch, allowance) if batch.notable else []
        if self._sent_open:
            out += self._ends_of_open(batch)
        room = int(allowance) - len(out)
        if room > 0:
            out += self._window(batch, room)
        if len(out) > 1:
            out = list(dict(zip(map(_seq_of, out), out)).values())     # each event once
            out.sort(key=_seq_of)
        return out

    def _notable(self, batch: EventBatch, allowance: float) -> list:
        """1. cancels, discards, inline failures and flagged ends, and the submits (pins) of
        ops cancelled in this drain.  Full-batch C passes: only when the counters moved."""
        inline = batch.group(EV_OP_INLINE)
        ends = batch.group(EV_OP_END)
        cancels = batch.group(EV_OP_CANCEL)
        inline_failed = (list(compress(inline, map(ne, map(_col7, inline),
                                                    repeat(OUTCOME_COMPLETED))))
                         if inline else [])
        flagged = list(compress(ends, map(_col7, ends))) if ends else []
        out = list(chain(cancels, batch.group(EV_DISCARD), inline_failed, flagged))
        if len(out) > allowance:
            out.sort(key=_seq_of)
            del out[int(allowance):]
            return out
        sent_open = self._sent_open
        if flagged and sent_open:
            sent_open.difference_update(map(_op_of, flagged))
        submits = batch.group(EV_OP_SUBMIT)
        if cancels and submits:                 # ops cancelled in this very drain
            cancelled = set(map(_op_of, cancels))
            extra = list(compress(submits, map(cancelled.__contains__, map(_op_of, submits))))
            if extra:
                ids = set(map(_op_of, extra))
                out += extra
                pins = batch.group(EV_BUF_PIN)
                out += compress(pins, map(ids.__contains__, map(_pin_op_of, pins)))
                ids.difference_update(map(_op_of, flagged))
                sent_open |= ids                # their ends travel when they come
        return out

    def _ends_of_open(self, batch: EventBatch) -> list:
        """2. the ends of ops sent earlier and still open (in flight when the sampler
        started, or cancelled).  Which of them ended is read off the monitor's in-flight
        table (``Monitor.not_in_flight``: one table lookup per id, in C); the batch is searched
        only when one did."""
        sent_open = self._sent_open
        not_in_flight = getattr(self._monitor, "not_in_flight", None)
        ended = not_in_flight(sent_open) if not_in_flight is not None else set(sent_open)
        if not ended:
            return []
        ends = batch.group(EV_OP_END)
        found = list(compress(ends, map(ended.__contains__, map(_op_of, ends))))
        got = set(map(_op_of, found))
        sent_open.difference_update(got)
        # ended after the drain (its end is in the next one) or lost: one more drain's grace
        missing = ended - got
        stale = missing & self._missing
        sent_open.difference_update(stale)
        self._missing = missing - stale
        return found

    def _window(self, batch: EventBatch, room: int) -> list:
        """3. every whole op lifecycle that starts in a window of ``room`` consecutive events
        at a random place in the batch and ends within half as many events after it, with the
        window's inline ops.  Only the window (and its tail) is looked at: a C slice, and
        C-level passes over it."""
        n = len(batch)
        m = min(room, n)
        i = self._rng.randrange(n - m + 1)
        tail = min(n - i - m, self._tail(m))
        part = EventBatch(batch[i:i + m + tail], notable=False)
        return self._lifecycles(part, part[m - 1][0] + 1)

    def _tail(self, m: int) -> int:
        """How many events after a window of ``m`` are built to close its lifecycles: half
        the window in every LEARN_EVERY-th (a learning window, which measures the spans),
        else SPAN_MARGIN x the longest span the last learning window saw."""
        self._windows += 1
        full = m // 2
        self._learning = self._span is None or self._windows % LEARN_EVERY == 0
        if self._learning:
            return full
        return min(full, max(MIN_TAIL, SPAN_MARGIN * self._span))

    def _lifecycles(self, part: EventBatch, hi: int) -> list:
        """The window (events of ``part`` with seq < ``hi``): its inline ops, and the whole
        lifecycles of the ops that went pending in it and ended within ``part``."""
        in_window = hi.__gt__
        out = []
        inline = part.group(EV_OP_INLINE)
        if inline:
            out += compress(inline, map(in_window, map(_seq_of, inline)))
        submits = part.group(EV_OP_SUBMIT)
        ends = part.group(EV_OP_END)
        if not submits or not ends:
            return out
        started = set(map(_op_of, compress(submits, map(in_window, map(_seq_of, submits)))))
        closing = list(compress(ends, map(started.__contains__, map(_op_of, ends))))
        if not closing:
            return out
        closed = set(map(_op_of, closing))
        if self._learning:     # an op's id is its submit's seq: span = end seq - op id
            self._span = max(map(sub, map(_seq_of, closing), map(_op_of, closing)))
            self._learning = False
        out += compress(submits, map(closed.__contains__, map(_op_of, submits)))
        out += closing
        pins = part.group(EV_BUF_PIN)
        if pins:
            mine = list(compress(pins, map(closed.__contains__, map(_pin_op_of, pins))))
            out += mine
            releases = part.group(EV_BUF_RELEASE)
            if mine and releases:
                bufs = set(map(_op_of, mine))                 # a pin's buf id is its seq
                out += compress(releases, map(bufs.__contains__, map(_op_of, releases)))
        return out
