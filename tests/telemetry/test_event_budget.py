"""The per-subscriber event budget: thinning keeps what matters, counts what it leaves out.

The collector is driven by hand (``tick(now=...)``) with long sample and drain periods, so
its own thread never drains during a test; the monitor is fed as a backend feeds it.
"""
from __future__ import annotations

from loopmon.monitor import Monitor
from loopmon.monitor.events import (
    EV_BUF_PIN, EV_DISCARD, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE, EV_OP_SUBMIT, FLAG_DISCARDED,
    KIND_RECV_INTO, KIND_SEND, OUTCOME_CANCELLED, OUTCOME_COMPLETED,
)
from loopmon.telemetry.collector import Collector
from loopmon.telemetry.event_batch import EventBatch
from loopmon.telemetry.event_budget import EventSampler, budget_from_env, effective_budget
from loopmon.telemetry.messages import OpEvents, Sample
from loopmon.telemetry import wire


def _echo_tick(m: Monitor, round_trips: int, carry: list) -> None:
    """What an echo server records: inline sends, pending receives with a buffer.

    ``carry`` holds receives left pending across ticks (they end in the next tick)."""
    for rec in carry:
        m.op_end(rec, OUTCOME_COMPLETED, 100)
    carry.clear()
    for i in range(round_trips):
        m.op_inline(KIND_SEND, 5, 100, 100)
        rec = m.op_start_pinned(KIND_RECV_INTO, 6, 4096, 4096)
        if i % 7 == 0:
            carry.append(rec)
        else:
            m.op_end(rec, OUTCOME_COMPLETED, 100)
            m.delivered(100)


def _rare_events(m: Monitor) -> None:
    rec = m.op_start_pinned(KIND_RECV_INTO, 7, 4096, 4096)
    m.op_cancel(rec)
    m.op_end(rec, OUTCOME_CANCELLED)
    rec = m.op_start_pinned(KIND_RECV_INTO, 8, 4096, 4096)
    m.op_cancel(rec)
    m.op_end(rec, OUTCOME_COMPLETED, 176, flags=FLAG_DISCARDED)
    m.op_failed_inline(KIND_SEND, 9, 10, BrokenPipeError())


def _stream(sub) -> tuple[list[tuple], list[Sample]]:
    msgs = sub.poll()
    events = [e for x in msgs if isinstance(x, OpEvents) for e in x.events]
    return events, [x for x in msgs if isinstance(x, Sample)]


def test_under_budget_everything_flows_and_nothing_is_omitted():
    m = Monitor()
    col = Collector(m, sample_period=60.0, drain_period=60.0, event_budget=10_000)
    sub = col.subscribe()
    sub.poll()
    carry: list = []
    produced = 0
    for k in range(10):
        _echo_tick(m, 20, carry)          # 20 round trips = ~100 events per 50 ms: 2 k/s
        produced += m.events_queued()
        col.tick(now=1000.0 + k * 0.05)
    events, samples = _stream(sub)
    assert len(events) == produced
    assert samples[-1].counters["events_omitted"] == 0
    assert samples[-1].counters["event_budget"] == 10_000
    col.stop()


def test_over_budget_keeps_rare_events_and_whole_lifecycles_and_counts_the_rest():
    m = Monitor()
    budget = 4_000
    col = Collector(m, sample_period=60.0, drain_period=60.0, event_budget=budget)
    sub = col.subscribe()
    sub.poll()
    carry: list = []
    produced = 0
    ticks = 40
    for k in range(ticks):
        _echo_tick(m, 400, carry)         # ~2 000 events per 50 ms: 40 k/s, 10x the budget
        if k % 5 == 0:
            _rare_events(m)
        produced += m.events_queued()
        col.tick(now=1000.0 + k * 0.05)
    events, samples = _stream(sub)
    omitted = samples[-1].counters["events_omitted"]
    assert omitted > 0 and len(events) + omitted == produced
    # the bucket: at most its burst plus the budget's rate (the rare events may exceed it)
    assert len(events) <= budget * 0.5 + budget * ticks * 0.05 + 8 * ticks
    assert [e[0] for e in events] == sorted(e[0] for e in events)     # stream order kept
    codes = [e[1] for e in events]
    assert codes.count(EV_OP_CANCEL) == 2 * (ticks // 5)
    assert codes.count(EV_DISCARD) == ticks // 5
    failed_inline = [e for e in events if e[1] == EV_OP_INLINE and e[7] != OUTCOME_COMPLETED]
    assert len(failed_inline) == ticks // 5
    flagged = [e for e in events if e[1] == EV_OP_END and e[7]]
    assert len(flagged) == 2 * (ticks // 5)
    # whole lifecycles: every end sent has its submit sent, and every submit sent whose op
    # ended has its end and its pin sent
    submits = {e[3] for e in events if e[1] == EV_OP_SUBMIT}
    ends = {e[3] for e in events if e[1] == EV_OP_END}
    pins = {e[4] for e in events if e[1] == EV_BUF_PIN}
    assert ends <= submits
    still_open = {r.op_id for r in carry}
    assert submits - ends <= still_open
    assert submits <= pins
    assert len(submits) > ticks * 5            # a real sample, not just the rare ops
    col.stop()


def test_subscribers_share_a_budget_and_may_only_lower_it():
    m = Monitor()
    col = Collector(m, sample_period=60.0, drain_period=60.0, event_budget=5_000)
    a, b = col.subscribe(), col.subscribe()
    low = col.subscribe(event_budget=1_000)
    high = col.subscribe(event_budget=50_000)
    assert (a.event_budget, low.event_budget, high.event_budget) == (5_000, 1_000, 5_000)
    for s in (a, b, low, high):
        s.poll()
    carry: list = []
    _echo_tick(m, 2_000, carry)
    col.tick(now=1000.0)
    ea = [x for x in a.poll() if isinstance(x, OpEvents)]
    eb = [x for x in b.poll() if isinstance(x, OpEvents)]
    assert ea and all(x is y for x, y in zip(ea, eb))     # one message object: encoded once
    el, sl = _stream(low)
    assert len(el) < sum(len(x.events) for x in ea)
    assert sl[-1].counters["event_budget"] == 1_000 and sl[-1].counters["events_omitted"] > 0
    col.stop()


def test_budget_settings():
    assert effective_budget(25_000, None) == 25_000
    assert effective_budget(25_000, 0) == 25_000
    assert effective_budget(25_000, 1_000) == 1_000
    assert effective_budget(25_000, 99_000) == 25_000
    assert effective_budget(0, None) == 0                    # unlimited agent
    assert effective_budget(0, 1_000) == 1_000


def test_budget_from_env(monkeypatch):
    monkeypatch.setenv("LOOPMON_EVENT_BUDGET", "0")
    assert budget_from_env() == 0
    monkeypatch.setenv("LOOPMON_EVENT_BUDGET", "12000")
    assert budget_from_env() == 12_000
    monkeypatch.setenv("LOOPMON_EVENT_BUDGET", "lots")
    assert budget_from_env(7) == 7
    monkeypatch.delenv("LOOPMON_EVENT_BUDGET")
    assert budget_from_env(7) == 7
    m = Monitor()
    monkeypatch.setenv("LOOPMON_EVENT_BUDGET", "0")
    assert Collector(m).event_budget == 0


def test_ops_in_flight_before_the_sampler_keep_their_ends():
    m = Monitor()
    old = m.op_start_pinned(KIND_RECV_INTO, 6, 4096, 4096)
    m.drain()
    sampler = EventSampler(100, m)
    sampler.tokens = 0
    carry: list = []
    _echo_tick(m, 200, carry)
    m.op_end(old, OUTCOME_COMPLETED, 10)
    out = sampler.select(EventBatch(m.drain()), 1.0)
    assert any(e[1] == EV_OP_END and e[3] == old.op_id for e in out)
    assert sampler.omitted_total > 0


def test_event_batch_groups_and_encoding():
    m = Monitor()
    carry: list = []
    _echo_tick(m, 50, carry)
    _rare_events(m)
    events = m.drain()
    batch = EventBatch(events)
    assert batch == events and batch.codes == bytes(e[1] for e in events)
    for code in range(1, 8):
        assert batch.group(code) == [e for e in events if e[1] == code]
        assert batch.count_code(code) == sum(1 for e in events if e[1] == code)
    assert batch.group(200) == []
    odd = EventBatch(events + [(10**6, 300, 0.0)])         # a code beyond a byte: Python path
    assert odd.codes is None and odd.group(EV_OP_SUBMIT) == batch.group(EV_OP_SUBMIT)
    # the packed encoder takes the batch's views and gives the same bytes
    assert wire.encode_frame(OpEvents(batch)) == wire.encode_frame(OpEvents(list(events)))
    dec = wire.FrameDecoder(expect_header=False)
    [back] = dec.feed(wire.encode_frame(OpEvents(batch)))
    assert back.events == events


def test_a_subscriber_without_op_events_gets_samples_only():
    m = Monitor()
    col = Collector(m, sample_period=60.0, drain_period=60.0, event_budget=1_000)
    sub = col.subscribe(op_events=False)
    sub.poll()
    carry: list = []
    _echo_tick(m, 500, carry)
    col.tick(now=1000.0)
    msgs = sub.poll()
    assert not any(isinstance(x, OpEvents) for x in msgs)
    [sample] = [x for x in msgs if isinstance(x, Sample)]
    assert "events_omitted" not in sample.counters and not col._samplers
    col.stop()
