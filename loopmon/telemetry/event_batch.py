"""``EventBatch``: one tick's drained events, with per-code views computed once, in C.

Why it exists
-------------
The collector thread shares the GIL with the monitored loop: every microsecond it spends in
Python per event is a microsecond the program's own thread waits.  An echo server at ~170 k
events/s gives the collector ~8 500 events per 50 ms tick, and a plain ``for ev in events:
if ev[1] == ...`` loop costs ~100 ns per event per consumer before it does anything useful.

So a tick's events are wrapped once in an ``EventBatch`` (a ``list`` subclass, so anything that
takes the raw list still works) and every consumer -- the detectors, the event-budget sampler,
the packed encoder -- asks it for what it needs:

* ``codes``: the event code of every event as a ``bytes`` object (one ``map(itemgetter(1))``
  pass in C; ~20 ns per event), from which ``count_code(code)`` is a C ``bytes.count``;
* ``group(code)``: the events of one code, in order -- ``itertools.compress`` with a mask
  made by ``bytes.translate``, all C-level, cached so the second consumer pays nothing.

The trick throughout the consumers is the same: pick columns with ``map(itemgetter(i), ...)``,
filter with ``compress``, and feed dicts and sets with ``update`` / ``difference_update`` /
``dict.fromkeys``: loops that run in C and never create a Python frame per event.

``notable``: could the batch hold a *notable* event -- a cancel, a discard, a failure, an op
end with flags or an outcome other than "completed", a close?  Those are what the detectors
and the event budget look at one by one, and most batches have none.  ``NotableGate`` answers
from the monitor's counters (every notable event bumps one of them before it is appended),
read after each drain, so a consumer can skip even the C-level passes.  A batch made from a
plain list says True (it knows nothing better).

Traps: events come from the monitor's ring, so they are well-formed tuples of the layouts in
``loopmon.monitor.events``; but a code above 255 (a newer recorder) would not fit in ``bytes``,
so ``codes`` is then ``None`` and ``group`` falls back to a Python filter (correct, slower).
The batch is not thread-safe and is meant to live for one tick.
"""
from __future__ import annotations

from collections import deque
from itertools import compress
from operator import attrgetter, itemgetter
from typing import Any, Iterable, Optional

_code_of = itemgetter(1)
_MASKS: dict[int, bytes] = {c: bytes(1 if i == c else 0 for i in range(256)) for c in range(256)}


class EventBatch(list):
    """A list of event tuples plus cached per-code views (see the module docstring)."""

    __slots__ = ("_codes", "_codes_done", "_groups", "notable")

    def __init__(self, events: Iterable[tuple] = (), notable: bool = True) -> None:
        super().__init__(events)
        self._codes: Optional[bytes] = None
        self._codes_done = False
        self._groups: dict[int, list] = {}
        #: False only when the monitor's counters prove no notable event is in the batch
        self.notable = notable

    @classmethod
    def of(cls, events: list) -> "EventBatch":
        """``events`` itself if it is already a batch, else a batch of it (one C-level copy)."""
        return events if isinstance(events, EventBatch) else cls(events)

    @property
    def codes(self) -> Optional[bytes]:
        """The code of each event, in order (None if a code does not fit in a byte)."""
        if not self._codes_done:
            self._codes_done = True
            try:
                self._codes = bytes(map(_code_of, self))
            except (ValueError, TypeError, IndexError):
                self._codes = None
        return self._codes

    def count_code(self, code: int) -> int:
        """How many events have ``code``."""
        codes = self.codes
        if codes is not None:
            return codes.count(code) if 0 <= code < 256 else 0
        return len(self.group(code))

    def group(self, code: int) -> list:
        """The events with ``code``, in order (cached; do not mutate the returned list)."""
        got = self._groups.get(code)
        if got is not None:
            return got
        codes = self.codes
        if codes is None:
            got = [ev for ev in self if ev[1] == code]
        elif not 0 <= code < 256:
            got = []
        else:
            n = codes.count(code)
            if n == 0:
                got = []
            elif n == len(codes):
                got = self
            else:
                got = list(compress(self, codes.translate(_MASKS[code])))
        self._groups[code] = got
        return got


#: the monitor counters a notable event bumps (a cancel, a discard, a failure -- inline or at
#: its end --, a cancelled or late end, a drained-at-close end: ``ops_cancelled``; the close)
NOTABLE_COUNTERS = ("ops_failed", "ops_cancelled", "cancel_requests", "late_completions",
                    "bytes_discarded", "closed")


class NotableGate:
    """Says, after each drain, whether the drained events may hold a notable one.

    Every notable event bumps one of ``NOTABLE_COUNTERS`` *before* it is appended to the
    ring, so a drain can only hold one if the counters moved.  The comparison is with the
    reading of two drains ago, not the last one: in the pure-Python recorder the loop thread
    may be switched out between the bump and the append, so an event drained now may have
    been counted just before the previous reading.  (Its bump cannot predate the reading
    before that: the loop thread would have had to stall between two statements for a whole
    collector cycle.)  A monitor without these counters: always True.
    """

    __slots__ = ("_monitor", "_hist")

    _read = staticmethod(attrgetter(*NOTABLE_COUNTERS))

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor
        self._hist: deque = deque(maxlen=2)

    def quiet_now(self) -> bool:
        """Before a drain: are the counters where they were two drains ago?  Then no notable
        event is queued -- save one recorded after this very reading (see ``drain``)."""
        hist = self._hist
        if len(hist) < 2:
            return False
        try:
            return self._read(self._monitor) == hist[0]
        except AttributeError:
            return False

    def after_drain(self) -> bool:
        try:
            now = self._read(self._monitor)
        except AttributeError:
            return True
        hist = self._hist
        moved = len(hist) < 2 or now != hist[0]
        hist.append(now)
        return moved
