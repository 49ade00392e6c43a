"""The event budget asks the monitor which of the ops it sent are still in flight.

Ops in flight when a client attaches (and cancelled ones) are tracked until their end
travels.  Whether one of them ended is asked of ``Monitor.not_in_flight`` -- a lookup per id
in the core's op table -- so that a drain in which none ended can stay a ranged drain (only
the sampled window built).  Both recorder cores, real Monitors.
"""
from __future__ import annotations

import pytest

from loopmon.monitor import events as ev
from loopmon.monitor import recorder
from loopmon.telemetry.event_budget import EventSampler

CORES = [pytest.param(recorder.PyMonitor, id="python"),
         pytest.param(recorder.CMonitor, id="c",
                      marks=pytest.mark.skipif(recorder.CMonitor is None,
                                               reason="the C core is not built"))]


@pytest.mark.parametrize("Mon", CORES)
def test_open_ops_still_in_flight_need_no_whole_drain(Mon):
    mon = Mon()
    recs = [mon.op_start_recv(10 + i, 1024) for i in range(3)]
    sampler = EventSampler(1000, mon)           # seeded with the three ops in flight
    for _ in range(50):                         # traffic that ends on its own
        mon.op_done(mon.op_start_recv(99, 1024), 10)
    assert not sampler.needs_whole_drain()
    mon.op_done(recs[1], 5)                     # one the client holds ended: find its end
    assert sampler.needs_whole_drain()


@pytest.mark.parametrize("Mon", CORES)
def test_not_in_flight_answers_per_id(Mon):
    mon = Mon()
    a, b = mon.op_start(ev.KIND_ACCEPT, 3, 0), mon.op_start(ev.KIND_RECV, 4, 10)
    mon.op_end(a, ev.OUTCOME_CANCELLED)
    assert mon.not_in_flight({a.op_id, b.op_id, 12345}) == {a.op_id, 12345}
    assert mon.not_in_flight(set()) == set()
