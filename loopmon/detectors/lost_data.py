"""lost-data: bytes the OS handed to the loop that nobody will ever deliver (bpo-33694).

The mechanism
-------------
On a real overlapped backend a cancel is only a request.  If the receive had already completed in
the kernel, its completion still arrives, carrying bytes, after the future was cancelled.
Pre-fix asyncio dropped that result: the bytes vanished (a start_tls test hung on 176 lost
bytes).  A correct backend either delivers such a late completion or never lets it happen; the
monitor records the fault's signature as an ``EV_OP_END`` with ``FLAG_DISCARDED`` followed by an
``EV_DISCARD`` event, and counts the bytes in ``bytes_discarded``.

Two signals
-----------
1. **Discards** (certain).  ``bytes_discarded`` grows: received bytes were dropped.  Alerts at
   once, critical, with the op ids from the ``EV_DISCARD`` events.  The counter is read off the
   monitor, so a discard is not missed even when its event fell off an overflowing ring.
2. **An unexplained gap** (a backstop for losses the backend does not flag).
   ``bytes_received - bytes_delivered - bytes_discarded`` is normally a few in-flight chunks.
   The trap: a *paused* transport legitimately holds the data of its last read, forever if the
   program never resumes it, and a program may have many paused transports.  So the gap is
   allowed ``lost_gap_hold_per_reader`` bytes per fd that ran a receive recently (plus slack),
   and only a gap that stays above that bound for ``lost_gap_seconds`` — its *minimum* over the
   window, so normal traffic that dips back never counts — raises a warning.
   A second trap: a program may *close* a paused transport; the data it held is then never
   delivered, by the program's choice, and the gap keeps it forever (the demo ends that way).
   If the monitor counts such bytes (``bytes_abandoned``, when the loop provides it) they are
   taken out of the gap; otherwise the gap alert re-fires only when the gap has doubled, never
   as a reminder, so slowly accumulated abandoned bytes cannot make it nag.
Late completions that carried bytes and were *not* discarded are listed as evidence (bytes at
risk) but are not an alert on their own: a correct backend delivers them.

Cost: the collector runs on a thread that shares the GIL with the loop, so this detector
tracks nothing per op and asks for events only when it needs them (``wants_events``): when
the monitor's counters say a drain may hold a cancel, a flagged end or a discard, or while
the gap is above ``lost_gap_track_above`` (64 KiB).  A healthy program's gap is a few chunks
in transit (the 1 KiB echo benchmark: at most 6 KiB), so it costs nothing per event.
Reading fds come from the observed drains' receive submits and inline receives (C-level
filters).  That misses only receives made while the whole gap was under the threshold --
together they hold at most that much -- so the bound adds it.  A receive in flight for long
keeps its fd a reader through a walk of the monitor's in-flight table every few seconds; the
kind of a cancelled op (only receives' late completions count) comes from the observed
drains' submits, or from that table (an op whose submit was in an unobserved drain and
which ended before the next walk stays of unknown kind: its late bytes are left out of the
evidence, never out of an alert).
"""
from __future__ import annotations

from collections import deque
from itertools import chain, compress
from operator import itemgetter
from typing import TYPE_CHECKING

from ..monitor.events import (
    EV_DISCARD, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE, EV_OP_SUBMIT, FLAG_DISCARDED,
    FLAG_LATE_COMPLETION, KIND_BY_NAME, RECEIVE_KINDS,
)
from ..telemetry.event_batch import EventBatch
from ..telemetry.messages import Alert
from .base import (
    KIND_LOST_DATA, SEVERITY_CRITICAL, SEVERITY_WARNING, AlertGate, human_bytes, make_alert,
)
from .config import DetectorConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..monitor.recorder import Monitor

_MAX_TRACKED_CANCELS = 100_000    # cancelled op ids remembered (bounded if events drop)
_TABLE_REFRESH_INTERVAL = 5.0     # seconds between walks of the in-flight table
_READER_PRUNE_INTERVAL = 1.0      # seconds between sweeps of stale reader fds
_IS_RECEIVE = RECEIVE_KINDS.__contains__
_op_of = itemgetter(3)
_kind_of = itemgetter(4)
_fd_of = itemgetter(5)
_flags_of = itemgetter(7)


class LostDataDetector:
    kind = KIND_LOST_DATA

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.gate = AlertGate(config)
        self.discard_events = 0                 # EV_DISCARD events seen
        self.discard_event_bytes = 0
        self.recent_discard_ops: deque = deque(maxlen=config.evidence_ids)
        self.late_completions_with_bytes = 0    # not discarded: delivered, we hope
        self.late_completion_bytes = 0
        self._cancelled: dict[int, int] = {}    # cancelled op id -> kind, until its end
        self._unresolved_cancels: set[int] = set()   # cancelled ops of unknown kind
        self._recent_submits: deque = deque(maxlen=10)  # the last batches' submit events
        self._next_table_refresh = 0.0
        self._next_resolve = 0.0
        self._reader_fds: dict[int, float] = {} # fd -> last time a receive op ran on it
        self._gap_since = 0.0                   # start of the current run of over-bound samples
        self._next_prune = 0.0

    # ------------------------------------------------------------------ events
    def wants_events(self, monitor: "Monitor", notable: bool) -> bool:
        """The collector asks after each drain: are these events needed?

        Only if they may hold a cancel, a flagged end or a discard (``notable``, from the
        counters), or if the gap is above ``lost_gap_track_above`` (reading fds matter then).
        A healthy busy program is neither almost always: no per-event work at all.
        """
        if notable:
            return True
        try:
            gap = (monitor.bytes_received - monitor.bytes_delivered - monitor.bytes_discarded
                   - (getattr(monitor, "bytes_abandoned", 0) or 0))
        except AttributeError:
            return True
        return gap > self.config.lost_gap_track_above

    def observe(self, events: list[tuple]) -> None:
        """Note reading fds, the kinds of cancelled ops, late completions and discards.

        No Python work per event (this runs on the collector thread, which shares the GIL
        with the monitored loop): columns are picked with ``itemgetter`` maps, filtered with
        ``compress`` and poured into dicts with ``update`` -- all C loops.  Only rare events
        (cancels, flagged ends, discards) are looked at one by one.  Reader times have tick
        resolution (the batch's newest event time): the reader window is a minute.
        """
        batch = EventBatch.of(events)
        if not batch:
            return
        t = batch[-1][2]
        readers = self._reader_fds
        submits = batch.group(EV_OP_SUBMIT)
        if submits:
            readers.update(dict.fromkeys(
                map(_fd_of, compress(submits, map(_IS_RECEIVE, map(_kind_of, submits)))), t))
        inline = batch.group(EV_OP_INLINE)
        if inline:
            readers.update(dict.fromkeys(
                map(_fd_of, compress(inline, map(_IS_RECEIVE, map(_kind_of, inline)))), t))
        self._recent_submits.append(submits)
        if not batch.notable:
            return         # the counters say: no cancel, flagged end or discard in here
        cancels = batch.group(EV_OP_CANCEL)
        if cancels:
            self._note_cancels(set(map(_op_of, cancels)))
        ends = batch.group(EV_OP_END)
        if ends:
            cancelled = self._cancelled
            for ev in compress(ends, map(_flags_of, ends)):    # only ends with flags: rare
                kind = cancelled.pop(ev[3], None)
                flags = ev[7]
                if (flags & FLAG_LATE_COMPLETION and ev[5] and not flags & FLAG_DISCARDED
                        and kind in RECEIVE_KINDS):
                    self.late_completions_with_bytes += 1
                    self.late_completion_bytes += ev[5]
        for ev in batch.group(EV_DISCARD):                    # rare
            self.discard_events += 1
            self.discard_event_bytes += ev[4]
            self.recent_discard_ops.append(ev[3])

    def _note_cancels(self, op_ids: set) -> None:
        """Remember the kinds of cancelled ops (a late completion counts only for receives).

        The submit is usually among the last batches' (~0.1 s, kept for this); an older op's kind is
        looked up in the monitor's in-flight table at the next ``evaluate``.
        """
        cancelled = self._cancelled
        if len(cancelled) + len(op_ids) > _MAX_TRACKED_CANCELS:
            cancelled.clear()          # ends were lost: only evidence is lost with them
        recent = list(chain.from_iterable(self._recent_submits))
        found = list(compress(recent, map(op_ids.__contains__, map(_op_of, recent))))
        cancelled.update(zip(map(_op_of, found), map(_kind_of, found)))
        op_ids.difference_update(map(_op_of, found))
        self._unresolved_cancels |= op_ids

    def _refresh_from_table(self, monitor: "Monitor", now: float) -> None:
        """Receives long in flight keep their fd a reader; older cancelled ops get a kind.

        One walk of the in-flight table, every ``_TABLE_REFRESH_INTERVAL`` or when a cancel
        needs it (at most once a second): it costs in proportion to the ops in flight.
        """
        unresolved = self._unresolved_cancels
        if now < self._next_table_refresh and not (unresolved and now >= self._next_resolve):
            return
        self._next_resolve = now + 1.0
        self._next_table_refresh = now + _TABLE_REFRESH_INTERVAL
        readers = self._reader_fds
        for op in monitor.outstanding():
            kind = KIND_BY_NAME.get(op.kind)
            if kind in RECEIVE_KINDS:
                readers[op.fd] = now
            if op.op_id in unresolved:
                self._cancelled[op.op_id] = kind
        unresolved.clear()

    # ------------------------------------------------------------------ verdict
    def evaluate(self, monitor: "Monitor", now: float) -> list[Alert]:
        self._refresh_from_table(monitor, now)
        alerts: list[Alert] = []
        received = monitor.bytes_received
        delivered = monitor.bytes_delivered
        discarded = monitor.bytes_discarded
        evidence = {
            "bytes_discarded": discarded,
            "discard_events": self.discard_events,
            "op_ids": [op for op in self.recent_discard_ops if op],
            "bytes_received": received,
            "bytes_delivered": delivered,
            "late_completions": monitor.late_completions,
            "late_completion_bytes_not_discarded": self.late_completion_bytes,
            "cancel_requests": monitor.cancel_requests,
        }
        if discarded > 0:
            reason = self.gate.check("discard", discarded, now, persistent=False, unit="bytes")
            if reason is not None:
                ops = evidence["op_ids"]
                which = f" by op{'s' if len(ops) > 1 else ''} {_ids(ops)}" if ops else ""
                alerts.append(make_alert(
                    KIND_LOST_DATA, SEVERITY_CRITICAL, now,
                    f"{human_bytes(discarded)} received from the OS were discarded, never "
                    f"delivered ({self.discard_events} cancelled receive(s) whose data had "
                    f"already arrived{which})", evidence, reason))
        abandoned = getattr(monitor, "bytes_abandoned", 0) or 0
        gap_alert = self._check_gap(now, received - delivered - discarded - abandoned, evidence)
        if gap_alert is not None:
            alerts.append(gap_alert)
        return alerts

    def _check_gap(self, now: float, gap: int, evidence: dict):
        cfg = self.config
        if gap <= cfg.lost_gap_hold_per_reader + cfg.lost_gap_slack + cfg.lost_gap_track_above:
            self._gap_since = 0.0          # below the bound of a single reader: no need to look
            return None
        readers = self._reader_fds
        if now >= self._next_prune:        # a sweep of every reading fd: not every tick
            self._next_prune = now + _READER_PRUNE_INTERVAL
            horizon = now - cfg.lost_reader_window
            for fd in [fd for fd, t in readers.items() if t < horizon]:
                del readers[fd]
        bound = (cfg.lost_gap_hold_per_reader * max(1, len(readers)) + cfg.lost_gap_slack
                 + cfg.lost_gap_track_above)
        if gap <= bound:
            self._gap_since = 0.0
            return None
        if not self._gap_since:
            self._gap_since = now
            return None
        held_for = now - self._gap_since
        if held_for < cfg.lost_gap_seconds:
            return None
        reason = self.gate.check("gap", gap, now, persistent=False, unit="bytes")
        if reason is None:
            return None
        ev = dict(evidence, gap_bytes=gap, gap_bound_bytes=bound, reader_fds=len(readers),
                  gap_seconds=round(held_for, 3))
        return make_alert(
            KIND_LOST_DATA, SEVERITY_WARNING, now,
            f"received - delivered has stayed above {human_bytes(bound)} (what {len(readers)} "
            f"reading fd(s) may legitimately hold) for {held_for:.1f} s: "
            f"{human_bytes(gap)} received and not delivered", ev, reason)


def _ids(ids) -> str:
    ids = list(ids)
    return ", ".join(str(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
