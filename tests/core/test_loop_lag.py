"""Loop lag (``loopmon.loop_lag``): a periodic timer's delay, from a timerfd where Linux has one,
else from a heap timer -- real loops, real blocking, real fds."""
from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

import loopmon
from loopmon import loop_lag

HAS_TIMERFD = loop_lag._open_periodic is not None


def _run(loop, coro_fn):
    try:
        return loop.run_until_complete(coro_fn(loop))
    finally:
        loop.close()


def _run_seeing_timer(loop, body):
    """Run ``body(loop)`` on ``loop`` (then close it): (the lag timer's type, the lags)."""
    seen = {}

    async def main(loop):
        seen["timer"] = type(loop._lag_timer)
        await body(loop)

    _run(loop, main)
    return seen["timer"], [lag for _, lag in loop.monitor.lag_samples()]


async def _block_then_idle(loop):
    await asyncio.sleep(0.2)
    time.sleep(0.3)                     # the loop is blocked: expiries pass unread
    await asyncio.sleep(0.2)


@pytest.mark.skipif(not HAS_TIMERFD, reason="no timerfd on this platform")
def test_timerfd_lag_sees_a_blocked_loop_once():
    loop = loopmon.new_event_loop()     # lag_interval 0.05 s
    timer, lags = _run_seeing_timer(loop, _block_then_idle)
    assert timer is loop_lag.TimerfdLag
    big = [lag for lag in lags if lag >= 0.2]
    # the block missed ~6 expiries of 50 ms; they are read at once and make one sample
    # measured from the earliest (~0.25-0.3 s late), not six
    assert len(big) == 1, lags
    assert big[0] < 1.0, lags
    assert loop.monitor.snapshot().loop_lag_max == max(lags)
    # idle before and after: samples keep coming, about one per interval
    assert len(lags) >= 5, lags


@pytest.mark.skipif(not HAS_TIMERFD, reason="no timerfd on this platform")
def test_timerfd_is_closed_and_unwatched_when_the_loop_stops():
    loop = loopmon.new_event_loop()
    fds = []

    async def main(loop):
        fds.append(loop._lag_timer._fd)
        await asyncio.sleep(0.12)

    try:
        loop.run_until_complete(main(loop))
        fd = fds[0]
        assert loop._lag_timer is None
        assert not loop._proactor.has_handles(fd)
        with pytest.raises(OSError):
            os.fstat(fd)                # closed (nothing in this test opens an fd meanwhile)
        n = len(loop.monitor.lag_samples())
        time.sleep(0.15)                # stopped: nothing fires, nothing is recorded
        assert len(loop.monitor.lag_samples()) == n
        loop.run_until_complete(main(loop))     # and a new run arms a new one
        assert len(loop.monitor.lag_samples()) > n
    finally:
        loop.close()


def test_heap_timer_fallback_measures_the_same(monkeypatch):
    monkeypatch.setattr(loop_lag, "_open_periodic", None)
    timer, lags = _run_seeing_timer(loopmon.new_event_loop(), _block_then_idle)
    assert timer is loop_lag.HeapTimerLag
    assert [lag for lag in lags if lag >= 0.2], lags


@pytest.mark.skipif(not HAS_TIMERFD, reason="no timerfd on this platform")
def test_a_failing_timerfd_falls_back_and_is_counted(monkeypatch):
    def no_fds(first, interval):
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(loop_lag, "_open_periodic", no_fds)
    loop = loopmon.new_event_loop()
    timer, lags = _run_seeing_timer(loop, lambda loop: asyncio.sleep(0.12))
    assert timer is loop_lag.HeapTimerLag
    assert loop.monitor.instrumentation_errors == 1
    assert lags


def test_bare_loop_arms_no_lag_timer():
    loop = loopmon.new_event_loop(instrument=False)

    async def main(loop):
        assert loop._lag_timer is None
        assert not loop._scheduled      # no heap timer either: nothing per iteration

    _run(loop, main)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_linux_has_a_timerfd():
    assert HAS_TIMERFD     # 3.13+: os.timerfd_create; before: libc through ctypes
