"""The Collector, fed by hand from a thread acting as the loop (no event loop needed)."""
from __future__ import annotations

import threading
import time

from loopmon.monitor import Monitor
from loopmon.telemetry.collector import Collector
from loopmon.telemetry.messages import (Alert, Dropped, Goodbye, Hello, History, OpEvents,
                                        Outstanding, Sample)


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def _feed(monitor: Monitor, stop: threading.Event) -> None:
    while not stop.is_set():
        for _ in range(50):
            monitor.op_inline(0, 5, 100, 100)
        time.sleep(0.001)


def test_for_monitor_is_shared():
    m = Monitor()
    assert Collector.for_monitor(m) is Collector.for_monitor(m)
    assert Collector.for_monitor(Monitor()) is not Collector.for_monitor(m)


def test_backlog_then_live_stream_and_late_attach_sees_history():
    m = Monitor(backend="selector")
    col = Collector(m, sample_period=0.01, outstanding_every=0.03)
    rec = m.op_start(0, 9, 10)            # one op stays outstanding
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(m, stop), daemon=True)
    feeder.start()
    try:
        first = col.subscribe()
        assert isinstance(first.hello, Hello) and first.hello.backend == "selector"
        got: list = []
        assert _wait_for(lambda: got.extend(first.poll()) or
                         sum(isinstance(x, Sample) for x in got) >= 10)
        assert isinstance(got[0], History) and isinstance(got[1], Outstanding)
        assert got[1].ops[0]["op_id"] == rec.op_id and got[1].ops[0]["kind"] == "recv"
        events = [e for x in got if isinstance(x, OpEvents) for e in x.events]
        assert events and events[0][1] == 2          # the EV_OP_SUBMIT came first
        late = col.subscribe()
        backlog = late.poll()
        assert isinstance(backlog[0], History) and len(backlog[0].samples) >= 10
        assert backlog[0].samples[-1].counters["ops_outstanding"] == 1
        assert any(isinstance(x, Outstanding) for x in got[2:])   # periodic Outstanding
    finally:
        stop.set()
        feeder.join()
    m.drain_at_close()
    assert _wait_for(lambda: col.finished)
    tail = first.poll() + late.poll()
    assert any(isinstance(x, Goodbye) for x in tail)
    after = col.subscribe().poll()
    assert isinstance(after[-1], Goodbye)


def test_slow_subscriber_gets_drops_counted_and_bounded():
    m = Monitor()
    col = Collector(m, sample_period=1.0)            # driven by hand
    sub = col.subscribe(maxlen=10)
    with col._lock:
        col._subs.append(sub) if sub not in col._subs else None
    for _ in range(100):
        m.op_inline(4, 5, 10, 10)
        col.tick()
    assert len(sub._queue) <= 11
    assert sub.dropped_total > 0
    msgs = sub.poll()
    col.tick()
    msgs = sub.poll()
    assert isinstance(msgs[0], Dropped) and msgs[0].total == sub.dropped_total
    col.stop()


class _GoodDetector:
    def observe(self, events):
        self.n = len(events)

    def evaluate(self, monitor, now):
        return [Alert("op-climb", "warning", now, time.time(), "climbing", {"n": self.n})]


class _BadDetector:
    def observe(self, events):
        raise RuntimeError("boom")

    def evaluate(self, monitor, now):
        return []


def test_detectors_feed_alerts_and_errors_are_counted():
    m = Monitor()
    col = Collector(m, sample_period=1.0, detectors=[_BadDetector(), _GoodDetector()])
    sub = col.subscribe()
    m.op_inline(0, 5, 1, 1)
    col.tick()
    msgs = sub.poll()
    alerts = [x for x in msgs if isinstance(x, Alert)]
    assert alerts and alerts[0].evidence == {"n": 1}
    assert col.detector_errors == 1 and "boom" in col.last_detector_error
    assert list(m.alerts) == alerts
    sample = [x for x in msgs if isinstance(x, Sample)][-1]
    assert sample.counters["detector_errors"] == 1 and sample.rss > 0
    assert col.subscribe().poll()[0].alerts == alerts          # alerts in the backlog
    col.stop()


def test_history_is_bounded_in_two_tiers():
    m = Monitor()
    col = Collector(m, sample_period=0.05, history_seconds=10, recent_seconds=1, decimate=10)
    for _ in range(2000):
        col.tick()
    hist = col.history()
    assert len(hist) == 20 + 18
    assert all(a.t <= b.t for a, b in zip(hist, hist[1:]))


def test_subscription_bounds_queued_events():
    m = Monitor()
    col = Collector(m, sample_period=1.0)
    sub = col.subscribe(maxlen=10_000, max_events=1000)
    for _ in range(50):
        for _ in range(100):
            m.op_inline(0, 5, 10, 10)
        col.tick()
    queued = sum(len(x.events) for x in list(sub._queue) if isinstance(x, OpEvents))
    assert queued <= 1000 and sub.dropped_total >= 40
    drops = [x for x in sub.poll() if isinstance(x, Dropped)]
    assert drops and sum(d.count for d in drops) + sub._pending_drops == sub.dropped_total
    m.op_inline(0, 5, 10, 10)
    col.tick()
    assert any(isinstance(x, OpEvents) for x in sub.poll())     # flows again once drained
    col.stop()


def test_in_process_subscription_on_a_real_instrumented_loop():
    """What the Qt widget's attach_monitor does: subscribe to a live loop in-process."""
    import asyncio
    import loopmon

    loop = loopmon.new_event_loop()
    try:
        col = Collector.for_monitor(loop.monitor, sample_period=0.02)
        sub = col.subscribe()
        assert sub.hello.backend == loop.monitor.backend

        async def traffic():
            async def echo(r, w):
                while data := await r.read(1024):
                    w.write(data)
                    await w.drain()
                w.close()
            srv = await asyncio.start_server(echo, "127.0.0.1", 0)
            r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
            got = []
            deadline = loop.time() + 20
            while loop.time() < deadline and sum(isinstance(m, Sample) for m in got) < 5:
                w.write(b"x" * 100)
                await w.drain()
                await r.readexactly(100)
                got += sub.poll()                 # non-blocking, on the loop thread itself
                await asyncio.sleep(0.005)
            w.close()
            await w.wait_closed()
            await asyncio.sleep(0.05)             # the echo handler sees EOF and ends
            srv.close()
            await srv.wait_closed()
            return got
        got = loop.run_until_complete(traffic())
    finally:
        loop.close()
    assert isinstance(got[0], History) and isinstance(got[1], Outstanding)
    events = [e for m in got if isinstance(m, OpEvents) for e in m.events]
    assert any(e[1] == 1 for e in events)                    # inline ops seen
    samples = [m for m in got if isinstance(m, Sample)]
    assert samples[-1].counters["bytes_sent"] > 0
    assert _wait_for(lambda: col.finished)                   # loop closed: collector ends
    assert isinstance(sub.poll()[-1], Goodbye)


class _SpyDetector:
    """Records which drains it was shown; ``want(notable)`` is its ``wants_events`` answer."""

    def __init__(self, want):
        self.want = want
        self.seen: list = []

    def wants_events(self, monitor, notable):
        return self.want(notable)

    def observe(self, events):
        self.seen.append((len(events), events.notable))

    def evaluate(self, monitor, now):
        return []


def test_detectors_observe_only_the_drains_they_want_and_notable_follows_the_counters():
    m = Monitor()
    never = _SpyDetector(lambda notable: False)
    on_notable = _SpyDetector(lambda notable: notable)
    plain = _GoodDetector()                     # no wants_events: sees every drain
    plain.calls = 0
    plain_observe = plain.observe
    plain.observe = lambda ev: (setattr(plain, "calls", plain.calls + 1), plain_observe(ev))
    col = Collector(m, sample_period=60.0, drain_period=60.0,
                    detectors=[never, on_notable, plain])

    def tick(k, rare=False):
        for _ in range(10):
            m.op_inline(4, 5, 10, 10)
        if rare:
            m.op_failed_inline(4, 5, 10, BrokenPipeError())
        col.tick(now=1000.0 + k)

    for k in range(6):
        tick(k)
    assert never.seen == []
    # no counter history for the first two drains: notable; then healthy drains are not
    assert on_notable.seen == [(10, True), (10, True)]
    assert plain.calls == 6
    tick(6, rare=True)                          # a failure: this drain and the next may hold it
    tick(7)
    tick(8)
    assert on_notable.seen[2:] == [(11, True), (10, True)]
    assert plain.calls == 9 and never.seen == []
    col.stop()


def test_nobody_wanting_the_events_still_drains_the_ring():
    m = Monitor(ring_capacity=64)
    never = _SpyDetector(lambda notable: False)
    col = Collector(m, sample_period=60.0, drain_period=60.0, detectors=[never])
    for k in range(20):
        for _ in range(50):
            m.op_inline(4, 5, 10, 10)
        col.tick(now=1000.0 + k)
    assert never.seen == [] and m.events_dropped == 0
    col.stop()


class _NotableMonitor(Monitor):
    """A monitor with the ``drain_notable()`` primitive (here in Python, over ``drain()``)."""

    def drain_notable(self):
        self.notable_drains = getattr(self, "notable_drains", 0) + 1
        return [ev for ev in self.drain()
                if ev[1] in (3, 7) or (ev[1] == 1 and ev[7] != 1) or (ev[1] == 4 and (ev[8] or ev[4] != 1))]


def test_drain_notable_is_used_when_nobody_needs_ordinary_events():
    m = _NotableMonitor()
    on_notable = _SpyDetector(lambda notable: notable)
    col = Collector(m, sample_period=60.0, drain_period=60.0, detectors=[on_notable])
    for _ in range(10):
        m.op_inline(4, 5, 10, 10)
    col.tick(now=1000.0)
    assert on_notable.seen == [] and m.notable_drains == 1 and m.events_queued() == 0
    m.op_inline(4, 5, 10, 10)
    m.op_failed_inline(4, 5, 10, BrokenPipeError())
    col.tick(now=1001.0)
    assert on_notable.seen == [(1, True)]
    # a subscriber streaming op events: every event is drained and sent again
    sub = col.subscribe(event_budget=0)
    sub.poll()
    for _ in range(5):
        m.op_inline(4, 5, 10, 10)
    col.tick(now=1002.0)
    assert sum(len(x.events) for x in sub.poll() if isinstance(x, OpEvents)) == 5
    assert m.notable_drains == 2
    col.stop()


class _RangedMonitor(Monitor):
    """A monitor with ``drain_range()`` (here in Python, over ``drain()``)."""

    ranged = 0

    def drain_range(self, start, stop, max_items=1 << 30):
        self.ranged += 1
        taken = self.drain(max_items)
        first = taken[0][0] if taken else self._seq_next
        return first, taken[start:stop]


def test_ranged_drain_builds_only_the_window_and_keeps_whole_lifecycles():
    from loopmon.monitor.events import EV_BUF_PIN, EV_OP_CANCEL, EV_OP_END, EV_OP_SUBMIT
    m = _RangedMonitor()
    col = Collector(m, sample_period=60.0, drain_period=60.0, event_budget=2_000,
                    detectors=[])
    sub = col.subscribe()
    sub.poll()
    produced = 0
    for k in range(30):
        for _ in range(300):                      # ~1 500 events per 10 ms: 150 k/s
            m.op_inline(4, 5, 10, 10)
            rec = m.op_start_pinned(1, 6, 4096, 4096)
            m.op_end(rec, 1, 100)
            m.delivered(100)
        if k == 20:                               # a cancel: that drain is built whole
            rec = m.op_start_pinned(1, 7, 4096, 4096)
            m.op_cancel(rec)
            m.op_end(rec, 2)
        produced += m.events_queued()
        col._ingest(1000.0 + k * 0.01)
    col.tick(now=1000.3)
    events = [e for x in sub.poll() if isinstance(x, OpEvents) for e in x.events]
    assert m.ranged >= 20                         # most drains were ranged
    assert col._samplers[2_000].omitted_total + len(events) == produced
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    codes = [e[1] for e in events]
    assert codes.count(EV_OP_CANCEL) == 1
    submits = {e[3] for e in events if e[1] == EV_OP_SUBMIT}
    ends = {e[3] for e in events if e[1] == EV_OP_END}
    pins = {e[4] for e in events if e[1] == EV_BUF_PIN}
    assert submits and submits == ends and submits <= pins
    assert len(events) <= 2_000 * 0.5 + 2_000 * 0.31 + 200
    col.stop()


class _SkippingMonitor(_RangedMonitor, _NotableMonitor):
    """Both primitives: a quiet drain with nobody streaming is skipped unread."""


def test_a_quiet_drain_nobody_needs_is_skipped_unread_and_a_loud_one_is_not():
    m = _SkippingMonitor()
    on_notable = _SpyDetector(lambda notable: notable)
    col = Collector(m, sample_period=60.0, drain_period=60.0, detectors=[on_notable])
    for k in range(6):
        for _ in range(10):
            m.op_inline(4, 5, 10, 10)
        col.tick(now=1000.0 + k)
    assert m.ranged >= 3 and m.events_queued() == 0 and on_notable.seen == []
    ranged = m.ranged
    m.op_inline(4, 5, 10, 10)
    m.op_failed_inline(4, 5, 10, BrokenPipeError())
    col.tick(now=1010.0)
    assert m.ranged == ranged and on_notable.seen == [(1, True)]
    assert m.events_dropped == 0
    col.stop()
