"""The C core's ``drain_window`` against the Python path it replaces, on random streams.

``drain_window(start, stop, n, window)`` selects the event budget's window of whole op
lifecycles straight from the ring and packs it (``loopmon/monitor/_drain_window.h``).  The
Python path is ``drain_range`` + ``EventSampler.take_window`` + ``encode_packed``.  For random
programs recorded through a real C core (the backend's calls: inline ops, pending ops with and
without buffers, cancels, failures, kept buffers; and raw ``_emit`` events with arbitrary op
ids, which no backend makes but the selection must treat alike) and random windows, both must
send the same events: the packed bytes decode to exactly the Python selection, are the very
bytes ``encode_packed`` gives when the string table's order is not in question, and the
learnt span is the same.  The stream is recorded once and replayed (``_emit`` keeps codes,
times and fields) into two cores, so both paths read identical rings.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopmon.monitor import Monitor
from loopmon.monitor.events import (EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL,
                                    EV_OP_END, EV_OP_INLINE, EV_OP_SUBMIT, OUTCOME_CANCELLED,
                                    OUTCOME_COMPLETED, OUTCOME_FAILED)
from loopmon.telemetry import wire
from loopmon.telemetry.collector import Collector
from loopmon.telemetry.event_budget import EventSampler
from loopmon.telemetry.messages import OpEvents
from loopmon.telemetry.packed_events import PackedEvents, encode_packed
from loopmon.telemetry.values import _Reader
from loopmon.telemetry.packed_events import decode_packed

needs_c_core = pytest.mark.skipif(not hasattr(Monitor, "drain_window"),
                                  reason="the pure-Python core has no drain_window")

ERRORS = ["", "", "", "BrokenPipeError", "ConnectionResetError", "TimeoutError"]

# one step of a program: what a backend (or the Python side of the recorder) calls
action = st.one_of(
    st.tuples(st.just("inline"), st.integers(0, 11), st.integers(0, 5000)),
    st.tuples(st.just("inline_failed"), st.integers(0, 11), st.sampled_from(ERRORS[3:])),
    st.tuples(st.just("start"), st.integers(0, 2), st.integers(0, 11)),
    st.tuples(st.just("start"), st.integers(0, 2), st.integers(0, 11)),
    st.tuples(st.just("done"), st.integers(0, 1 << 16), st.integers(0, 5000)),
    st.tuples(st.just("done"), st.integers(0, 1 << 16), st.integers(0, 5000)),
    st.tuples(st.just("end"), st.integers(0, 1 << 16),
              st.sampled_from([OUTCOME_COMPLETED, OUTCOME_CANCELLED, OUTCOME_FAILED]),
              st.sampled_from(ERRORS), st.sampled_from([0, 0, 1, 3, 4, 8]), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 1 << 16)),
    st.tuples(st.just("release"), st.integers(0, 1 << 16)),
    st.tuples(st.just("discard"), st.integers(0, 3000)),
    # raw events whose ids point anywhere near (or at) earlier events: duplicate op ids, ends
    # of ops never started, pins of other ops' ids
    st.tuples(st.just("emit"), st.sampled_from([EV_OP_SUBMIT, EV_OP_END, EV_BUF_PIN,
                                                EV_BUF_RELEASE, EV_OP_CANCEL]),
              st.integers(-40, 3)),
)


def _record(actions: list, repeat: int) -> list[tuple]:
    """Run the program ``repeat`` times on a real C core; its events, drained."""
    m = Monitor(ring_capacity=1 << 16)
    open_recs: list = []
    kept: list = []
    for _ in range(repeat):
        for a in actions:
            op = a[0]
            if op == "inline":
                m.op_inline(a[1], 5, 4096, a[2])
            elif op == "inline_failed":
                m.op_failed_inline(a[1], 5, 10, type(a[2], (Exception,), {})())
            elif op == "start":
                rec = (m.op_start(a[2], 6, 100) if a[1] == 0 else
                       m.op_start_pinned(a[2], 6, 100, 4096) if a[1] == 1 else
                       m.op_start_recv(6, 4096))
                open_recs.append(rec)
            elif op in ("done", "end", "cancel") and open_recs:
                rec = open_recs[a[1] % len(open_recs)]
                if op == "cancel":
                    m.op_cancel(rec)
                    continue
                open_recs.remove(rec)
                if op == "done":
                    m.op_done(rec, a[2])
                else:
                    m.op_end(rec, a[2], 7, a[3], a[4], keep_buffer=a[5])
                    if a[5] and rec.buffer_id:
                        kept.append(rec)
            elif op == "release" and kept:
                m.buffer_release(kept.pop(a[1] % len(kept)))
            elif op == "discard":
                m.discarded(a[1], m._seq_next - 1)
            elif op == "emit":
                ref = max(1, m._seq_next - 1 + a[2])
                fields = {EV_OP_SUBMIT: (ref, 1, 6, 100), EV_OP_END: (ref, 1, 5, "", 0),
                          EV_BUF_PIN: (m._seq_next, ref, 64), EV_BUF_RELEASE: (ref,),
                          EV_OP_CANCEL: (ref,)}[a[1]]
                m._emit(a[1], 1.5 + ref, *fields)
    events = m.drain()
    assert m.instrumentation_errors == 0
    return events


def _replay(events: list[tuple], skip: int, capacity: int) -> Monitor:
    """A fresh core holding ``events`` (seqs, times and fields as recorded), with the first
    ``skip`` of them already drained."""
    m = Monitor(ring_capacity=capacity)
    for e in events:
        m._emit(e[1], e[2], *e[3:])
        if skip and m._seq_next - 1 == skip:
            m.drain_range(0, 0)
    return m


@needs_c_core
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(action, min_size=1, max_size=60), repeat=st.integers(1, 40),
       data=st.data())
def test_drain_window_sends_what_the_python_path_sends(actions, repeat, data):
    events = _record(actions, repeat)
    total = len(events)
    if total == 0:
        return
    skip = data.draw(st.integers(0, total - 1), label="skip")
    # a ring smaller than what is queued sometimes: both paths then lose the same oldest ones
    capacity = data.draw(st.sampled_from([1 << 16, 1 << 16, max(1, (total - skip) // 2)]),
                         label="capacity")
    py_core, c_core = _replay(events, skip, capacity), _replay(events, skip, capacity)
    queued = py_core.events_queued()
    assert queued == c_core.events_queued()
    # mostly the sampler's shape (a window early enough to have a tail, the tail up to the
    # end), sometimes anything, out of range included
    n = data.draw(st.one_of(st.just(queued), st.integers(0, queued + 3)), label="max_items")
    start = data.draw(st.one_of(st.integers(0, max(0, n // 3)), st.integers(-2, n + 2)),
                      label="start")
    room = max(0, n - max(start, 0))
    window = data.draw(st.one_of(st.integers(room // 4, room // 2), st.integers(0, room)),
                       label="window")
    stop = data.draw(st.one_of(st.just(n), st.integers(start + window, n + 3),
                               st.integers(start, n + 3)), label="stop")

    first_seq, part = py_core.drain_range(start, stop, n)
    sampler = EventSampler(1000)
    sampler._learning = True                   # a learning window: it measures the span
    expected = sampler.take_window(first_seq, part, (max(start, 0), stop, window), n)
    c_first, selected, payload, span = c_core.drain_window(start, stop, n, window)

    assert c_first == first_seq
    assert c_core._next_seq == py_core._next_seq
    assert c_core.events_dropped == py_core.events_dropped
    assert selected == len(expected)
    assert span == sampler._span
    if not expected:
        assert payload is None
        return
    r = _Reader(memoryview(payload))
    assert r.take(1)[0] == wire.FORM_PACKED
    assert decode_packed(r) == expected
    names = {e[9] for e in expected if e[1] == EV_OP_INLINE} | \
        {e[6] for e in expected if e[1] == EV_OP_END}
    if len(names - {""}) <= 1:                 # no set order in the table: the same bytes
        assert payload == encode_packed(expected)


@needs_c_core
def test_a_window_big_enough_to_release_the_gil_selects_the_same():
    """Windows of DW_RELEASE_MIN (16 Ki) copied events and more select and pack with the GIL
    released, in a block of their own: the same result."""
    program = [("inline", 4, 100), ("start", 2, 1), ("start", 1, 4), ("done", 0, 100),
               ("inline_failed", 4, "BrokenPipeError"), ("cancel", 0), ("done", 0, 50),
               ("start", 0, 7), ("end", 0, OUTCOME_CANCELLED, "TimeoutError", 1, False)]
    events = _record(program, 3000)
    assert len(events) > 2 * 16384
    for start, stop, window in [(100, 30_000, 20_000), (0, len(events), 16_384)]:
        py_core, c_core = _replay(events, 0, 1 << 16), _replay(events, 0, 1 << 16)
        n = py_core.events_queued()
        first_seq, part = py_core.drain_range(start, stop, n)
        sampler = EventSampler(1000)
        sampler._learning = True
        expected = sampler.take_window(first_seq, part, (start, stop, window), n)
        _, selected, payload, span = c_core.drain_window(start, stop, n, window)
        assert selected == len(expected) > 16384 // 2 and span == sampler._span
        assert PackedEvents(payload, selected) == expected


@needs_c_core
def test_a_budgeted_stream_gets_packed_windows_that_read_as_tuples():
    m = Monitor(ring_capacity=1 << 16)
    col = Collector(m, sample_period=60.0, drain_period=60.0, event_budget=2_000,
                    detectors=[])
    sub = col.subscribe()
    sub.poll()
    for k in range(6):
        for _ in range(200):
            m.op_inline(4, 5, 100, 100)
            m.op_done(m.op_start_recv(6, 4096), 100)
        col.tick(now=1000.0 + k * 0.05)
    msgs = [x for x in sub.poll() if isinstance(x, OpEvents)]
    packed = [x for x in msgs if type(x.events) is PackedEvents]
    assert packed, "the C core's windows travel packed"
    for msg in packed:
        frame = wire.encode_frame(msg)
        assert frame[5:] == msg.events.payload             # sent as it is
        back = wire.FrameDecoder(expect_header=False).feed(frame)[0]
        assert back.events == list(msg.events)             # the tuples, in seq order
        assert len(msg.events) == len(back.events)
        seqs = [e[0] for e in msg.events]
        assert seqs == sorted(seqs)
        submits = {e[3] for e in msg.events if e[1] == EV_OP_SUBMIT}
        assert submits == {e[3] for e in msg.events if e[1] == EV_OP_END}
        assert submits == {e[4] for e in msg.events if e[1] == EV_BUF_PIN}
    col.stop()


def test_packed_events_is_lazy_and_compares_as_its_tuples():
    events = [(1, EV_OP_INLINE, 1.0, 1, 4, 5, 10, OUTCOME_COMPLETED, 10, ""),
              (2, EV_OP_SUBMIT, 2.0, 2, 1, 6, 10),
              (3, EV_DISCARD, 2.5, 2, 7),
              (4, EV_OP_END, 3.0, 2, OUTCOME_FAILED, 0, "OSError", 0)]
    pe = PackedEvents(encode_packed(events), len(events))
    assert len(pe) == 4 and pe._events is None           # len() does not decode
    assert pe == events and pe[-1][2] == 3.0 and list(pe) == events
    assert pe == PackedEvents(encode_packed(events), 4)
    assert OpEvents(pe) == OpEvents(events)
    assert wire.decode_payload(wire.FRAME_OP_EVENTS, wire.encode_payload(OpEvents(pe))).events \
        == events
