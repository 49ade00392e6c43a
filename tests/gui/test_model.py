"""The data model without Qt: ring buffers, coarse history, op table, session, units."""
from __future__ import annotations

import numpy as np
import pytest

from app.model import CoarseHistory, SeriesRing, SessionModel
from app.model.ops import SPAN_CANCELLED, SPAN_FAILED, SPAN_LOST, OpLifecycles, OutstandingOps
from app.model.session import COL
from app.synthetic import SyntheticTarget
from app.units import binary_scale, format_bytes, format_clock, format_duration
from loopmon.monitor.events import (
    EV_BUF_PIN, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE, EV_OP_SUBMIT, FLAG_CANCEL_REQUESTED,
    FLAG_DISCARDED, KIND_RECV, KIND_SEND, OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED,
)
from loopmon.telemetry.messages import Alert, Goodbye, Hello, History, OpEvents, Outstanding, Sample


def test_ring_keeps_newest_rows_in_order_and_views_without_copy():
    ring = SeriesRing(4, 2)
    for i in range(10):
        ring.append(np.array([i, i * 10.0]))
    view = ring.view()
    assert view[:, 0].tolist() == [6, 7, 8, 9]
    assert view.base is not None          # a view into the storage, not a copy
    assert ring.last()[1] == 90.0
    assert len(ring) == 4


def test_coarse_history_is_bounded_and_keeps_peaks():
    hist = CoarseHistory(8, 2, bucket_seconds=1.0)
    for i in range(2000):                  # 200 s at 10 Hz into 8 buckets
        hist.add(np.array([i / 10.0, 5.0 if i != 777 else 99.0]))
    rows = hist.view()
    assert len(rows) <= 9                  # 8 closed + the open one
    assert rows[:, 1].max() == 99.0        # the spike survives every merge
    assert np.all(np.diff(rows[:, 0]) > 0)
    assert hist.bucket_seconds > 1.0       # it coarsened


def test_outstanding_ops_follow_events_and_snapshots():
    ops = OutstandingOps()
    ops.apply((1, EV_OP_SUBMIT, 10.0, 7, KIND_SEND, 5, 1000))
    ops.apply((2, EV_BUF_PIN, 10.0, 1, 7, 1000))
    ops.apply((3, EV_OP_SUBMIT, 10.5, 8, KIND_RECV, 6, 4096))
    ops.apply((4, EV_OP_CANCEL, 11.0, 8))
    assert set(ops.rows) == {7, 8}
    assert ops.rows[7].buffer_size == 1000 and ops.rows[8].cancel_requested
    ops.apply((5, EV_OP_END, 11.5, 7, OUTCOME_COMPLETED, 1000, "", 0))
    ops.apply((6, EV_OP_END, 11.5, 999, OUTCOME_COMPLETED, 0, "", 0))   # never seen: ignored
    assert set(ops.rows) == {8}
    ops.replace(20.0, [dict(op_id=3, kind="accept", fd=4, requested=0, buffer_size=0, age=2.0,
                            cancel_requested=False, peer=None), {"garbage": 1}])
    assert list(ops.rows) == [3] and ops.rows[3].submit_t == 18.0


def test_rows_born_from_events_borrow_the_peer_of_their_fd_from_the_last_snapshot():
    ops = OutstandingOps()
    ops.replace(5.0, [dict(op_id=3, kind="recv_into", fd=9, requested=10, buffer_size=10,
                           age=1.0, cancel_requested=False, peer="127.0.0.1:8080")])
    ops.apply((4, EV_OP_END, 5.5, 3, OUTCOME_COMPLETED, 10, "", 0))
    ops.apply((5, EV_OP_SUBMIT, 6.0, 5, KIND_RECV, 9, 10))      # the same connection's next read
    ops.apply((6, EV_OP_SUBMIT, 6.0, 6, KIND_RECV, 11, 10))     # an fd no snapshot named
    assert ops.rows[5].endpoint == "fd 9 · 127.0.0.1:8080" and ops.rows[6].peer is None
    ops.replace(7.0, [])                                        # fd 9 no longer listed: forgotten
    ops.apply((7, EV_OP_SUBMIT, 7.5, 7, KIND_RECV, 9, 10))
    assert ops.rows[7].peer is None


def test_lifecycles_colour_outcomes():
    life = OpLifecycles()
    life.apply((1, EV_OP_SUBMIT, 1.0, 1, KIND_RECV, 3, 100))
    life.apply((2, EV_OP_CANCEL, 1.5, 1))
    life.apply((3, EV_OP_END, 2.0, 1, OUTCOME_CANCELLED, 0, "", FLAG_CANCEL_REQUESTED))
    life.apply((4, EV_OP_SUBMIT, 1.0, 2, KIND_RECV, 3, 100))
    life.apply((5, EV_OP_END, 2.0, 2, OUTCOME_COMPLETED, 50, "", FLAG_DISCARDED))
    life.apply((6, EV_OP_INLINE, 3.0, 3, KIND_SEND, 3, 10, OUTCOME_FAILED, 0, "BrokenPipeError"))
    outcomes = [s.outcome for s in life.finished]
    assert outcomes == [SPAN_CANCELLED, SPAN_LOST, SPAN_FAILED]
    assert life.finished[0].cancel_t == 1.5
    life.apply((7, EV_OP_SUBMIT, 4.0, 4, KIND_RECV, 3, 100))
    assert [s.op_id for s in life.spans_since(2.5)] == [3, 4]
    assert [s.op_id for s in life.spans_since(3.5)] == [4]


def _hello(pid=1, started=100.0):
    return Hello(1, 0, pid, ["prog"], "3.11", "selector", 0.05, started, 0.0)


def _sample(t, received=0, by_kind=None, lag=0.001):
    c = dict(ops_outstanding=sum((by_kind or {}).values()), ops_outstanding_by_kind=by_kind or {},
             bytes_received=received, bytes_delivered=received, buffer_bytes_live=4096,
             loop_lag=lag, ops_submitted=int(t * 100), events_dropped=3)
    return Sample(t, 0.0, c, rss=10 << 20)


def test_session_ingests_samples_history_alerts_and_reconnects():
    m = SessionModel()
    m.ingest(_hello())
    m.ingest(History([_sample(100.0 + i / 10, received=i * 1000, by_kind={"recv": 2, "send": 1})
                      for i in range(20)], [Alert("op-climb", "warning", 101.0, 0.0, "climb")]))
    rows = m.series(None)
    assert len(rows) == 20 and rows[0, 0] == pytest.approx(0.0)
    assert rows[-1, COL["out_recv"]] == 2 and rows[-1, COL["out_send"]] == 1
    assert rows[-1, COL["recv_rate"]] == pytest.approx(10_000, rel=1e-6)
    assert rows[-1, COL["lag_ms"]] == pytest.approx(1.0)
    assert m.kinds_seen == {"recv", "send"} and len(m.alerts) == 1
    assert m.events_dropped() == 3
    # the same target again: history kept, the overlapping backlog not duplicated
    m.ingest(Goodbye("bye"))
    assert not m.connected
    m.ingest(_hello())
    m.ingest(History([_sample(100.0 + i / 10) for i in range(25)],
                     [Alert("op-climb", "warning", 101.0, 0.0, "climb")]))
    assert len(m.series(None)) == 25 and len(m.alerts) == 1
    # a different target: fresh state
    m.ingest(_hello(pid=2, started=500.0))
    assert len(m.series(None)) == 0 and not m.alerts


def test_session_window_and_outstanding_snapshot():
    m = SessionModel()
    m.ingest(_hello())
    for i in range(300):
        m.ingest(_sample(100.0 + i * 0.1))
    assert m.series(10.0)[0, 0] >= 29.0 - 10.0 - 0.2
    m.ingest(Outstanding(130.0, [dict(op_id=1, kind="send", fd=3, requested=10, buffer_size=10,
                                      age=4.0, cancel_requested=False, peer="1.2.3.4:5")]))
    assert m.ops.rows[1].submit_t == 126.0 and m.ops.rows[1].endpoint == "fd 3 · 1.2.3.4:5"
    m.ingest(OpEvents([(1, EV_OP_END, 130.5, 1, OUTCOME_COMPLETED, 10, "", 0)]))
    assert not m.ops.rows
    header, rows = m.to_csv_rows()
    assert header[0] == "t" and len(rows) == 300


def test_synthetic_target_feeds_the_model_at_high_rate():
    clock = [1000.0]
    target = SyntheticTarget(ops_per_second=100_000, clock=lambda: clock[0])
    m = SessionModel()
    m.ingest(target.hello())
    for _ in range(40):
        clock[0] += 0.05
        m.ingest_many(target.step())
    assert m.events_total >= 200_000 and len(m.recent) >= 39
    assert m.ops_per_second() == pytest.approx(100_000, rel=0.1)
    assert m.ops.rows and m.lifecycles.finished


def test_units():
    assert binary_scale(1023) == (1.0, "B")
    assert binary_scale(5 * 1024 * 1024)[1] == "MiB"
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(12) == "12 B"
    assert format_duration(0.25) == "250 ms" and format_duration(125) == "2 m 05 s"
    assert format_clock(45) == "45 s" and format_clock(125) == "2:05"


def test_a_capped_snapshot_keeps_newer_ops_known_from_events():
    from app.model.ops import SNAPSHOT_CAP_HINT
    ops = OutstandingOps()
    ops.apply((1, EV_OP_SUBMIT, 50.0, 99_999, KIND_SEND, 5, 10))       # newer than the snapshot
    ops.apply((2, EV_OP_SUBMIT, 5.0, 99_998, KIND_SEND, 5, 10))        # older: really gone
    snapshot = [dict(op_id=i, kind="recv", fd=3, requested=1, buffer_size=1, age=40.0 - i * 1e-3,
                     cancel_requested=False) for i in range(SNAPSHOT_CAP_HINT)]
    ops.replace(45.0, snapshot)
    assert 99_999 in ops.rows and 99_998 not in ops.rows
    assert len(ops.rows) == SNAPSHOT_CAP_HINT + 1


def test_timeline_spans_follow_the_outstanding_snapshot():
    m = SessionModel()
    m.ingest(_hello())
    m.ingest(OpEvents([(1, EV_OP_SUBMIT, 101.0, 50, KIND_RECV, 3, 10)]))
    m.ingest(Outstanding(110.0, [dict(op_id=7, kind="recv", fd=3, requested=10, buffer_size=10,
                                      age=9.5, cancel_requested=False)]))
    assert set(m.lifecycles.open) == {7}               # 50 ended unseen; 7 predates us
    assert m.lifecycles.open[7].start == pytest.approx(100.5)


def test_ops_started_after_a_snapshot_survive_it():
    m = SessionModel()
    m.ingest(_hello())
    m.ingest(OpEvents([(1, EV_OP_SUBMIT, 110.5, 60, KIND_RECV, 3, 10)]))   # after the snapshot
    m.ingest(Outstanding(110.0, []))
    assert 60 in m.ops.rows and 60 in m.lifecycles.open


def test_session_reports_events_the_agent_budget_left_out():
    m = SessionModel()
    m.ingest(_hello())
    m.ingest(_sample(100.0))
    assert m.events_omitted() == (0, 0)          # an agent that sent everything
    thinned = _sample(100.1)
    thinned.counters.update(events_omitted=12345, event_budget=20000)
    m.ingest(thinned)
    assert m.events_omitted() == (12345, 20000)
