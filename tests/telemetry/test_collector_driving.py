"""Who drives the collector, and when it drains: a driving asyncio loop (the agent's) instead
of the collector's own thread, and ``DrainSchedule``'s decisions (no timings asserted)."""
from __future__ import annotations

import asyncio
import threading
import time

from pytest import approx

from loopmon.monitor import Monitor
from loopmon.telemetry.collector import Collector
from loopmon.telemetry.drain import RING_FILL, DrainSchedule
from loopmon.telemetry.messages import Goodbye, History, OpEvents, Sample


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


class _LoopThread:
    """A plain asyncio loop on a thread, standing in for the agent's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ident = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.ident = threading.get_ident()
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_a_driving_loop_replaces_the_thread_and_stop_says_goodbye():
    m = Monitor(backend="selector")
    col = Collector(m, sample_period=0.01)
    driver = _LoopThread()
    ticked_on: set = set()
    orig = col._tick

    def spy(now, final):
        ticked_on.add(threading.get_ident())
        orig(now, final)
    col._tick = spy
    try:
        assert col.drive_from(driver.loop) and col.driven
        assert col.drive_from(driver.loop)             # the same loop again: fine
        assert not col.drive_from(asyncio.new_event_loop())   # another one: refused
        sub = col.subscribe()                          # subscribing starts no thread
        assert col._thread is None
        rec = m.op_start(1, 5, 100)
        m.op_end(rec, 1, 10)
        got: list = []
        assert _wait_for(lambda: got.extend(sub.poll()) or
                         sum(isinstance(x, Sample) for x in got) >= 3)
        assert isinstance(got[0], History)
        assert any(isinstance(x, OpEvents) and x.events for x in got)
        assert ticked_on == {driver.ident}             # every tick on the driving thread
        col.stop("bye")                                # final tick here, then Goodbye
        assert col.finished and not col.driven
        rest = sub.poll()
        assert isinstance(rest[-1], Goodbye) and rest[-1].reason == "bye"
        assert col._thread is None
    finally:
        driver.close()


def test_a_driven_collector_finishes_when_its_loop_closes():
    m = Monitor()
    col = Collector(m, sample_period=0.01)
    driver = _LoopThread()
    try:
        assert col.drive_from(driver.loop)
        sub = col.subscribe()
        m.drain_at_close()
        m.closed = True
        assert _wait_for(lambda: col.finished)
        msgs = sub.poll()
        assert isinstance(msgs[-1], Goodbye) and msgs[-1].reason == "loop closed"
        assert not col.drive_from(driver.loop)         # finished: nothing to drive
    finally:
        driver.close()


def test_released_by_its_driver_the_collector_goes_on_with_its_own_thread():
    m = Monitor()
    col = Collector(m, sample_period=0.01)
    driver = _LoopThread()
    try:
        assert col.drive_from(driver.loop)
        sub = col.subscribe()
    finally:
        driver.close()
    col.release_driver()
    assert not col.driven and col._thread is not None
    n0 = col.ticks
    assert _wait_for(lambda: col.ticks > n0 + 2)
    assert not col.drive_from(asyncio.new_event_loop())    # a thread runs: refused
    col.stop()
    assert col.finished and isinstance(sub.poll()[-1], Goodbye)


def test_a_thread_run_collector_is_not_taken_over():
    m = Monitor()
    col = Collector(m, sample_period=0.01).start()
    try:
        assert not col.drive_from(asyncio.new_event_loop()) and not col.driven
    finally:
        col.stop()


class _FakeRing:
    def __init__(self, capacity: int) -> None:
        self.ring_capacity = capacity
        self.queued = 0

    def events_queued(self) -> int:
        return self.queued


def test_schedule_drains_once_per_tick_unless_the_ring_would_fill():
    ring = _FakeRing(1 << 16)
    s = DrainSchedule(0.05, 0.01, ring)
    assert s.start(100.0) == approx(0.01)             # rate unknown yet: the short period
    assert not s.tick_due(100.02) and s.tick_due(100.05)
    # 100 k events/s: 5 k per 50 ms, far below half the ring -> wake only for ticks
    ring.queued = 5000
    s.drained(100.05, s.queued(), full=False)
    s.ticked(100.05)
    assert s.delay(100.05) == approx(0.05)
    # 2 M events/s: half the ring (32 k) fills in ~16 ms -> drain early
    s.drained(100.10, 100_000, full=False)
    s.ticked(100.10)
    d = s.delay(100.10)
    assert 0.01 <= d < 0.05 and d == approx((1 << 16) * RING_FILL / 2e6)
    # counted from the drain's start: a drain (or a GIL wait) of 3 ms does not delay the next
    assert s.delay(100.103) == approx(d - 0.003)
    # the monitor doubled its ring: the room doubles too
    ring.ring_capacity = 1 << 17
    assert s.delay(100.10) > d
    # a full drain (every event built) keeps the short period
    s.drained(100.11, 10, full=True)
    assert s.delay(100.11) == approx(0.01)
    assert s.delay(100.13) == 0.0                     # late already: drain now


def test_schedule_without_a_ring_size_keeps_the_short_period():
    class NoRing:
        pass
    s = DrainSchedule(0.05, 0.01, NoRing())
    s.start(0.0)
    assert s.queued() == -1
    s.drained(0.01, -1, full=False)
    assert s.delay(0.01) == approx(0.01)
    s.ticked(0.05)
    s.ticked(0.2)                                     # fell far behind: no burst of ticks
    assert s.next_tick == 0.25


def test_the_agent_drives_its_collectors_and_hands_old_ones_back_at_close(runtime_dir):
    from loopmon.telemetry.agent import Agent
    agent = Agent(sample_period=0.02).start()
    first, second = Monitor(backend="selector"), Monitor(backend="selector")
    try:
        col1 = agent.attach(first)
        col2 = agent.attach(second)                   # the program's next loop
        assert col1.driven and col2.driven and agent.collector is col2
        assert col1._thread is None and col2._thread is None     # no thread of their own
        n0 = col2.ticks
        assert _wait_for(lambda: col2.ticks > n0 + 2)   # ticks on the agent's loop
    finally:
        agent.close("done")
    assert col2.finished and col2._finish_reason == "done"
    assert not col1.finished and not col1.driven        # its loop is open: its own thread now
    n1 = col1.ticks
    assert _wait_for(lambda: col1.ticks > n1 + 2)
    col1.stop()
