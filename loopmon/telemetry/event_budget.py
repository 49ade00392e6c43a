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
   detectors' evidence point at -- and the submit of an op cancelled in the same tick, so its
   span can be drawn.  (Capped at the tick's allowance: a storm of cancels is thinned too.)
2. **Pending-op lifecycles, sampled by op**: every k-th op that went pending in the tick is
   picked (a slice from a random offset: no per-event work, and no op pattern -- say every
   4th op id is a server-side receive -- is always missed), and for each picked op its
   submit, buffer pin and end all travel, in whatever later tick they happen (``_sent_open``
   remembers the picked ops in flight).  An end of an op that was not picked
   is left out, so the app never sees half a lifecycle it cannot close.
3. **Buffer releases and inline successes**: sent only when everything above fitted and they
   fit whole; otherwise left out (the app only counts inline ops, and buffer bytes come with
   every Sample).

Budget accounting is a token bucket (refilled at the budget rate, up to half a second's worth),
so a quiet program's bursts go out whole.

Cost: one ``EventBatch`` per tick (shared with the detectors) and C-level passes over the
groups it needs (``compress`` / ``map`` / set ``update``); no Python loop over the events.
Failures and flagged ends are only looked for when the monitor's counters say the batch may
hold one (``EventBatch.notable``).

Traps: ops in flight when the sampler starts have no submit it saw; they are treated as
picked (the client has them from its ``Outstanding`` backlog), so their ends travel.  If
events are lost (ring overflow) an end never comes and ``_sent_open`` would grow: it is
trimmed to the monitor's in-flight ops when it gets large.
"""
from __future__ import annotations

import os
import random
from itertools import chain, compress, repeat
from operator import eq, itemgetter, ne
from typing import Any, Optional

from ..monitor.events import (EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL, EV_OP_END,
                              EV_OP_INLINE, EV_OP_SUBMIT, OUTCOME_COMPLETED)
from .event_batch import EventBatch

DEFAULT_EVENT_BUDGET = 20_000        # events/s per client
BURST_SECONDS = 0.5                  # the bucket holds this much of the budget
_SENT_OPEN_TRIM = 200_000

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
        if monitor is not None:
            try:
                self._sent_open.update(op.op_id for op in monitor.outstanding())
            except Exception:
                pass

    def select(self, batch: EventBatch, now: float) -> list:
        """The events of ``batch`` this budget sends (the batch itself when all fit)."""
        if self._last_t is not None:
            self.tokens = min(self.capacity,
                              self.tokens + self.budget * max(0.0, now - self._last_t))
        self._last_t = now
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

    # ------------------------------------------------------------------ internals
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
        submits = batch.group(EV_OP_SUBMIT)
        inline = batch.group(EV_OP_INLINE)
        ends = batch.group(EV_OP_END)
        pins = batch.group(EV_BUF_PIN)
        cancels = batch.group(EV_OP_CANCEL)
        # 1. always: cancels, discards, inline failures, flagged ends (the counters say when
        #    to look for the last two: most ticks have none -- ``batch.notable``)
        inline_failed: list = []
        flagged: list = []
        if batch.notable:
            if inline:
                inline_failed = list(compress(inline, map(ne, map(_col7, inline),
                                                          repeat(OUTCOME_COMPLETED))))
            if ends:
                flagged = list(compress(ends, map(_col7, ends)))
        out = list(chain(cancels, batch.group(EV_DISCARD), inline_failed, flagged))
        if len(out) > allowance:
            out.sort(key=_seq_of)
            del out[int(allowance):]
        room = allowance - len(out)
        # 2. pending-op lifecycles, sampled by op: every k-th submit from a random offset
        #    (a slice: no per-event work; the offset moves so no op pattern is always missed)
        picked: list = []
        if submits and room > 0:
            per_op = max(1.0, (len(submits) + len(pins) + len(ends) - len(flagged)) / len(submits))
            want = room / per_op
            if want >= len(submits):
                picked = submits
            elif want >= 1:
                k = -(-len(submits) // int(want))
                picked = submits[self._rng.randrange(k)::k]
        if cancels and submits and picked is not submits:   # ops cancelled in this very tick
            cancelled = set(map(_op_of, cancels))
            extra = list(compress(submits, map(cancelled.__contains__, map(_op_of, submits))))
            if extra:
                picked = list(dict.fromkeys(chain(picked, extra)))
        sent_open = self._sent_open
        if picked:
            sent_open.update(map(_op_of, picked))
            out += picked
        if pins and sent_open:
            out += compress(pins, map(sent_open.__contains__, map(_pin_op_of, pins)))
        if ends and sent_open:
            sel = list(compress(ends, map(sent_open.__contains__, map(_op_of, ends))))
            if flagged:
                sel = [ev for ev in sel if not ev[7]]        # in already
                sent_open.difference_update(map(_op_of, flagged))
            sent_open.difference_update(map(_op_of, sel))
            out += sel
        room = allowance - len(out)
        # 3. buffer releases, then inline successes: whole groups only
        n_releases = batch.count_code(EV_BUF_RELEASE)      # the group is made only if it fits
        if n_releases and n_releases <= room:
            out += batch.group(EV_BUF_RELEASE)
            room -= n_releases
        n_ok = len(inline) - len(inline_failed)
        if n_ok and n_ok <= room:
            out += (compress(inline, map(eq, map(_col7, inline), repeat(OUTCOME_COMPLETED)))
                    if inline_failed else inline)
        out.sort(key=_seq_of)
        return out
