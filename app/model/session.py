"""``SessionModel``: everything the app knows about one monitored target, built from messages.

This is the data half of the model/view split (DESIGN.md, after the pyqtgraph examples): feeds
push telemetry messages in with ``ingest()``; widgets read numpy views and plain objects out on
their own timers.  Nothing here imports Qt or draws, so the model is tested and benchmarked
without a screen, and ingesting 100 k events/s costs one Python branch per event.

Time: every message carries the *target's* ``time.monotonic()``.  Series are stored against
``t - hello.started_t`` (seconds since the target's loop started), which is what the shared time
axis shows.  ``target_now()`` extrapolates the target's clock with our own monotonic clock
between messages so ages in the table keep ticking, and freezes when the target is gone.

Series columns (``COLUMNS``): gauges and counters from each ``Sample`` plus a derived receive
rate; per-kind outstanding counts get one column per op kind so the stacked graph needs no
dict lookups per frame.  Recent samples live in a ``SeriesRing`` (10 min at 20 Hz), the whole
session in a ``CoarseHistory`` (see ``app.model.series``).

Reconnects: a new ``Hello`` from the *same* pid and start time keeps the history (the agent's
``History`` backlog overlaps what we have; rows older than our newest are skipped); a different
target resets the model.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Iterable, Optional

import numpy as np

from loopmon.monitor.events import EV_OP_INLINE, KIND_NAMES
from loopmon.telemetry.messages import (
    Alert, Dropped, Goodbye, Hello, History, OpEvents, Outstanding, Sample,
)

from .ops import OpLifecycles, OutstandingOps
from .series import CoarseHistory, SeriesRing

BASE_COLUMNS: tuple[str, ...] = (
    "t", "rss", "buffer_bytes", "bytes_received", "bytes_delivered", "recv_rate",
    "lag_ms", "ops_outstanding", "ops_submitted", "bytes_discarded",
)
KIND_COLUMNS: tuple[str, ...] = tuple(f"out_{k}" for k in KIND_NAMES) + ("out_other",)
COLUMNS: tuple[str, ...] = BASE_COLUMNS + KIND_COLUMNS
COL: dict[str, int] = {name: i for i, name in enumerate(COLUMNS)}
_KIND_COL = {k: COL[f"out_{k}"] for k in KIND_NAMES}
_OTHER_COL = COL["out_other"]

RECENT_CAPACITY = 12_000        # 10 min at the default 50 ms sample period
HISTORY_BUCKETS = 4_096
MAX_ALERTS = 1_000


class SessionModel:
    """State of one monitored target (see the module docstring)."""

    def __init__(self, recent_capacity: int = RECENT_CAPACITY) -> None:
        self.recent = SeriesRing(recent_capacity, len(COLUMNS))
        self.history = CoarseHistory(HISTORY_BUCKETS, len(COLUMNS))
        self.ops = OutstandingOps()
        self.lifecycles = OpLifecycles()
        self.alerts: deque[Alert] = deque(maxlen=MAX_ALERTS)
        self.alerts_version = 0            # bumps on every alert: cheap change detection
        self.hello: Optional[Hello] = None
        self.connected = False
        self.ended_reason = ""             # why the stream ended ("" while live)
        self.last_counters: dict[str, Any] = {}
        self.last_sample: Optional[Sample] = None
        self.kinds_seen: set[str] = set()  # kinds that were ever outstanding (legend entries)
        self.events_total = 0              # op/buffer events ingested
        self.dropped_total = 0             # messages the agent dropped for us
        self.version = 0                   # bumps on every ingest: "is a redraw worth it?"
        self.newest_event_t = 0.0          # target clock of the newest event ingested
        self._rate_window: deque[tuple[float, int]] = deque(maxlen=64)
        self._events_window: deque[tuple[float, int]] = deque(maxlen=256)
        self._last_t = 0.0                 # target clock of the newest message
        self._last_local = 0.0             # our monotonic clock when it arrived
        self._prev_sample: Optional[tuple[float, float]] = None   # (t, bytes_received)

    # ------------------------------------------------------------------ time
    @property
    def t0(self) -> float:
        return self.hello.started_t if self.hello is not None else 0.0

    def target_now(self) -> float:
        """The target's monotonic clock now (extrapolated while connected, frozen after)."""
        if self.connected and self._last_local:
            return self._last_t + (time.monotonic() - self._last_local)
        return self._last_t

    def now_x(self) -> float:
        """Right edge of the graphs: seconds since the target started."""
        return self.target_now() - self.t0

    def freeze_clock(self, t: float) -> None:
        """Pin ``target_now()`` at ``t`` (a replay's position); only meaningful once disconnected."""
        self._last_t = t
        self._last_local = time.monotonic()

    def _seen(self, t: float) -> None:
        if t > self._last_t:
            self._last_t = t
            self._last_local = time.monotonic()

    # ------------------------------------------------------------------ ingest
    def reset(self) -> None:
        self.__init__(self.recent.capacity)   # same capacity, fresh state

    def ingest_many(self, messages: Iterable[Any]) -> None:
        for msg in messages:
            self.ingest(msg)

    def ingest(self, msg: Any) -> None:
        self.version += 1
        if isinstance(msg, OpEvents):
            self._ingest_events(msg.events)
        elif isinstance(msg, Sample):
            self._ingest_sample(msg)
        elif isinstance(msg, Outstanding):
            self._seen(msg.t)
            self.ops.replace(msg.t, msg.ops)
            self.lifecycles.sync_open(self.ops.rows, msg.t)
        elif isinstance(msg, Alert):
            self._ingest_alert(msg)
        elif isinstance(msg, History):
            for sample in msg.samples:
                self._ingest_sample(sample)
            known = {(a.kind, a.t) for a in self.alerts}
            for alert in msg.alerts:
                if (alert.kind, alert.t) not in known:
                    self._ingest_alert(alert)
        elif isinstance(msg, Hello):
            self._ingest_hello(msg)
        elif isinstance(msg, Dropped):
            self.dropped_total += msg.count
        elif isinstance(msg, Goodbye):
            self.mark_disconnected(msg.reason or "target said goodbye")

    def _ingest_hello(self, hello: Hello) -> None:
        old = self.hello
        same = old is not None and old.pid == hello.pid and abs(old.started_t - hello.started_t) < 1e-6
        if old is not None and not same:
            self.reset()
        self.hello = hello
        self.connected = True
        self.ended_reason = ""
        self._seen(hello.started_t)

    def mark_disconnected(self, reason: str) -> None:
        """The stream ended: keep every point, stop the clock, forget what was in flight."""
        if self.connected:
            self.connected = False
            self.ended_reason = reason
            self.lifecycles.drop_open()
            self.version += 1

    def _ingest_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)
        self.alerts_version += 1
        self._seen(alert.t)

    def _ingest_events(self, events: list[tuple]) -> None:
        if not events:
            return
        ops_apply = self.ops.apply
        life_apply = self.lifecycles.apply
        inline = EV_OP_INLINE
        n_inline = 0
        for ev in events:
            if ev[1] == inline and ev[7] == 1:     # completed inline: only counted
                n_inline += 1
                continue
            ops_apply(ev)
            life_apply(ev)
        self.lifecycles.inline_ops += n_inline
        self.events_total += len(events)
        t = events[-1][2]
        self.newest_event_t = t
        self._seen(t)

    def _ingest_sample(self, s: Sample) -> None:
        if len(self.recent) and s.t - self.t0 <= self.recent.last()[0]:
            return   # already have it (History backlog after a reconnect)
        c = s.counters
        self.last_counters = c
        self.last_sample = s
        row = np.zeros(len(COLUMNS))
        row[0] = s.t - self.t0
        row[1] = s.rss
        row[2] = c.get("buffer_bytes_live", 0)
        received = float(c.get("bytes_received", 0))
        row[3] = received
        row[4] = c.get("bytes_delivered", 0)
        if self._prev_sample is not None and s.t > self._prev_sample[0]:
            row[5] = max(0.0, (received - self._prev_sample[1]) / (s.t - self._prev_sample[0]))
        self._prev_sample = (s.t, received)
        row[6] = float(c.get("loop_lag", 0.0)) * 1000.0
        row[7] = c.get("ops_outstanding", 0)
        row[8] = c.get("ops_submitted", 0)
        row[9] = c.get("bytes_discarded", 0)
        by_kind = c.get("ops_outstanding_by_kind") or {}
        for name, count in by_kind.items():
            if count:
                self.kinds_seen.add(name)
            row[_KIND_COL.get(name, _OTHER_COL)] += count
        self.recent.append(row)
        self.history.add(row)
        self._rate_window.append((s.t, int(c.get("ops_submitted", 0))))
        self._seen(s.t)

    # ------------------------------------------------------------------ readers
    def series(self, window: Optional[float]) -> np.ndarray:
        """Rows for the last ``window`` seconds (None: the whole session, coarse where old)."""
        recent = self.recent.view()
        if window is not None:
            if not len(recent):
                return recent
            t_from = recent[-1, 0] - window
            i = int(np.searchsorted(recent[:, 0], t_from))
            return recent[max(0, i - 1):]
        if not len(recent):
            return recent
        old = self.history.view(include_open=False)
        if len(old):
            old = old[old[:, 0] < recent[0, 0]]
        return np.vstack([old, recent]) if len(old) else recent

    def ops_per_second(self) -> float:
        """Ops submitted per second over the last ~2 s of samples (from the target's counters)."""
        w = self._rate_window
        if len(w) < 2:
            return 0.0
        t1, n1 = w[-1]
        for t0, n0 in w:
            if t1 - t0 <= 2.0:
                break
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def events_per_second(self) -> float:
        """Op/buffer events ingested per second, over the last few seconds (our clock)."""
        now = time.monotonic()
        w = self._events_window
        if not w or w[-1][1] != self.events_total:
            w.append((now, self.events_total))
        while len(w) > 2 and now - w[0][0] > 3.0:
            w.popleft()
        if len(w) < 2 or w[-1][0] <= w[0][0]:
            return 0.0
        return (w[-1][1] - w[0][1]) / (now - w[0][0]) if self.connected else 0.0

    def events_dropped(self) -> int:
        """Events lost on the way: the target's ring overflow plus messages dropped for us."""
        return int(self.last_counters.get("events_dropped", 0)) + self.dropped_total

    def events_omitted(self) -> tuple[int, int]:
        """(op events the agent's per-client budget left out, that budget in events/s; 0: none).

        Under heavy traffic the agent streams a sample of op lifecycles, not every event; the
        counters and graphs stay exact, the timeline is then a sample."""
        c = self.last_counters
        return int(c.get("events_omitted", 0) or 0), int(c.get("event_budget", 0) or 0)

    def to_csv_rows(self) -> tuple[list[str], np.ndarray]:
        """Header and rows of the whole session (coarse history, then full resolution)."""
        return list(COLUMNS), self.series(None).copy()
