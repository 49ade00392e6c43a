"""Each detector on a real ``Monitor`` fed by hand: thresholds, edge cases, cool-down.

The monitor is driven exactly as a backend drives it (``op_start`` / ``buffer_pin`` /
``op_cancel`` / ``op_end`` ...), its ring is drained as the collector drains it, and the
detectors get ``observe(events)`` then ``evaluate(monitor, now)``.  ``now`` may be pushed into
the future to stand for time passing; anything measured off the monitor's own clock (buffer
and op ages, lag samples) uses small thresholds and short real waits instead.
"""
from __future__ import annotations

import dataclasses
import time

import pytest

from loopmon.detectors import (
    ALERT_KINDS, AlertGate, DetectorConfig, LeakedBufferDetector, LoopLagDetector,
    LostDataDetector, OpClimbDetector, StuckOpDetector, default_detectors, sign_test_p,
)
from loopmon.detectors.op_climb import climb_verdict
from loopmon.monitor import Monitor
from loopmon.monitor.events import (
    FLAG_DISCARDED, KIND_ACCEPT, KIND_CONNECT, KIND_RECV, KIND_RECV_INTO, KIND_SEND,
    OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED,
)
from loopmon.telemetry.messages import Alert

CFG = DetectorConfig()


def tick(monitor: Monitor, detector, now: float | None = None) -> list[Alert]:
    detector.observe(monitor.drain())
    return detector.evaluate(monitor, time.monotonic() if now is None else now)


# ---------------------------------------------------------------------------- plumbing
def test_default_detectors_cover_every_kind_and_are_fresh():
    a, b = default_detectors(), default_detectors()
    assert sorted(d.kind for d in a) == sorted(ALERT_KINDS)
    assert ALERT_KINDS == ("lost-data", "leaked-buffer", "stuck-op", "op-climb", "loop-lag")
    assert all(x is not y for x, y in zip(a, b))
    custom = DetectorConfig(leak_after=3.0)
    assert all(d.config is custom for d in default_detectors(custom))


def test_healthy_traffic_raises_nothing():
    m = Monitor(backend="test")
    dets = default_detectors()
    t = time.monotonic()
    for i in range(2000):
        m.op_inline(KIND_RECV, 5, 4096, 100)
        m.delivered(100)
        rec = m.op_start(KIND_SEND, 6, 1000)
        m.buffer_pin(rec, 1000)
        m.op_end(rec, OUTCOME_COMPLETED, 1000)
        rec = m.op_start(KIND_RECV_INTO, 7, 4096)
        m.buffer_pin(rec, 4096)
        m.op_cancel(rec)
        m.op_end(rec, OUTCOME_CANCELLED)       # cancelled before data: nothing lost
        m.record_lag(0.001)
    events = m.drain()
    alerts = []
    for k in range(100):   # 5 s of 50 ms ticks
        for d in dets:
            d.observe(events if k == 0 else [])
            alerts += d.evaluate(m, t + k * 0.05)
    assert alerts == []


# ---------------------------------------------------------------------------- lost-data
def _discard(m: Monitor, fd: int = 5, nbytes: int = 176):
    rec = m.op_start(KIND_RECV_INTO, fd, 4096)
    m.buffer_pin(rec, 4096)
    m.op_cancel(rec)
    m.op_end(rec, OUTCOME_COMPLETED, nbytes, flags=FLAG_DISCARDED)
    return rec.op_id


def test_lost_data_fires_on_a_discarded_late_completion_with_evidence():
    m = Monitor()
    d = LostDataDetector(CFG)
    m.op_inline(KIND_RECV, 5, 4096, 1000)
    m.delivered(1000)
    assert tick(m, d) == []
    op = _discard(m)
    [alert] = tick(m, d)
    assert alert.kind == "lost-data" and alert.severity == "critical"
    assert "176 B" in alert.message and str(op) in alert.message
    assert alert.evidence["bytes_discarded"] == 176
    assert alert.evidence["op_ids"] == [op]
    assert alert.evidence["discard_events"] == 1
    assert alert.evidence["late_completions"] == 1
    assert abs(alert.wall - time.time()) < 5
    assert "\n" not in alert.message


def test_lost_data_sees_discards_even_when_their_events_were_lost():
    m = Monitor(ring_capacity=4)
    d = LostDataDetector(CFG)
    _discard(m)
    for _ in range(20):          # push the discard event off the ring
        m.op_inline(KIND_SEND, 6, 10, 10)
    [alert] = tick(m, d)
    assert alert.evidence["bytes_discarded"] == 176
    assert alert.evidence["op_ids"] == []


def test_lost_data_does_not_flood_and_refires_when_evidence_grows():
    m = Monitor()
    d = LostDataDetector(CFG)
    t0 = time.monotonic()
    _discard(m, nbytes=100)
    assert len(tick(m, d, t0)) == 1
    _discard(m, nbytes=50)                       # 150 total: less than 2x
    assert tick(m, d, t0 + 5) == []
    _discard(m, nbytes=60)                       # 210 total: doubled, but too soon
    assert tick(m, d, t0 + 1.5) == []           # < min_refire_interval after the first
    [again] = tick(m, d, t0 + 6)
    assert "grew from 100 B to 210 B" in again.message
    assert tick(m, d, t0 + 7) == []              # nothing new: quiet
    assert tick(m, d, t0 + 6 + CFG.cooldown + 1) == []   # damage done, nothing new: no reminder
    _discard(m, nbytes=1)                        # new evidence after the cool-down
    [late] = tick(m, d, t0 + 6 + CFG.cooldown + 2)
    assert "cool-down" in late.message


def test_late_completion_that_was_delivered_is_not_lost_data():
    m = Monitor()
    d = LostDataDetector(CFG)
    rec = m.op_start(KIND_RECV_INTO, 5, 4096)
    m.op_cancel(rec)
    m.op_end(rec, OUTCOME_COMPLETED, 500)         # late, but not discarded...
    m.delivered(500)                              # ...and handed over
    assert tick(m, d) == []
    assert d.late_completion_bytes == 500


def test_lost_data_gap_tolerates_paused_transports_and_short_gaps():
    cfg = dataclasses.replace(CFG, lost_gap_seconds=2.0)
    m = Monitor()
    d = LostDataDetector(cfg)
    t0 = time.monotonic()
    # four readers, each holding a full 256 KiB read while paused: legitimate, forever
    for fd in range(10, 14):
        m.op_inline(KIND_RECV_INTO, fd, 262144, 262144)
    for k in range(200):
        assert tick(m, d, t0 + k * 0.05) == []
    # a big transient gap that is delivered within the window: no alert
    m.op_inline(KIND_RECV, 10, 1 << 22, 1 << 22)
    assert tick(m, d, t0 + 11) == []
    m.delivered(1 << 22)
    assert tick(m, d, t0 + 12.5) == []


def test_lost_data_gap_that_stays_fires_a_warning():
    cfg = dataclasses.replace(CFG, lost_gap_seconds=2.0)
    m = Monitor()
    d = LostDataDetector(cfg)
    t0 = time.monotonic()
    m.op_inline(KIND_RECV, 10, 1 << 22, 1 << 22)   # 4 MiB received on one fd, never delivered
    alerts = []
    for k in range(60):
        alerts += tick(m, d, t0 + k * 0.05)
    [alert] = alerts
    assert alert.kind == "lost-data" and alert.severity == "warning"
    assert alert.evidence["gap_bytes"] == 1 << 22
    assert alert.evidence["reader_fds"] == 1
    assert 2.0 <= alert.t - t0 <= 2.2


# ---------------------------------------------------------------------------- leaked-buffer
def _failed_send_keeping_buffer(m: Monitor, size: int = 1024):
    rec = m.op_start(KIND_SEND, 6, size)
    m.buffer_pin(rec, size)
    m.op_end(rec, OUTCOME_FAILED, error="BrokenPipeError", keep_buffer=True)
    return rec.op_id


def test_leaked_buffer_after_grace_period_with_evidence():
    cfg = dataclasses.replace(CFG, leak_after=0.2)
    m = Monitor()
    d = LeakedBufferDetector(cfg)
    op = _failed_send_keeping_buffer(m)
    rec = m.op_start(KIND_RECV_INTO, 7, 4096)   # an op still running holds its buffer: fine
    m.buffer_pin(rec, 4096)
    assert tick(m, d) == []                     # within the grace period
    time.sleep(0.25)
    [alert] = tick(m, d)
    assert alert.kind == "leaked-buffer" and alert.severity == "warning"
    ev = alert.evidence
    assert ev["buffers"] == 1 and ev["bytes"] == 1024 and ev["op_ids"] == [op]
    assert ev["failed_ops"] == 1 and ev["errors"] == {"BrokenPipeError": 1}
    assert ev["kinds"] == {"send": 1}
    assert "BrokenPipeError" in alert.message and "1 buffer(s)" in alert.message


def test_released_buffers_are_not_leaks():
    cfg = dataclasses.replace(CFG, leak_after=0.05)
    m = Monitor()
    d = LeakedBufferDetector(cfg)
    for _ in range(100):
        rec = m.op_start(KIND_SEND, 6, 100)
        m.buffer_pin(rec, 100)
        m.op_end(rec, OUTCOME_FAILED, error="BrokenPipeError")   # fixed behaviour: released
    time.sleep(0.1)
    assert tick(m, d) == []


def test_leaked_buffer_refires_on_doubling_and_as_a_reminder():
    cfg = dataclasses.replace(CFG, leak_after=0.05, cooldown=10.0, min_refire_interval=1.0)
    m = Monitor()
    d = LeakedBufferDetector(cfg)
    _failed_send_keeping_buffer(m)
    time.sleep(0.06)
    t0 = time.monotonic()
    assert len(tick(m, d, t0)) == 1
    _failed_send_keeping_buffer(m)
    time.sleep(0.06)
    assert tick(m, d, t0 + 0.5) == []           # doubled, but within min_refire_interval
    [grew] = tick(m, d, t0 + 1.5)
    assert "grew from 1 buffers to 2 buffers" in grew.message and grew.evidence["leaked_total"] == 2
    assert tick(m, d, t0 + 5) == []             # same two buffers: quiet
    [reminder] = tick(m, d, t0 + 12)
    assert "still present" in reminder.message
    # a leak that grows by less than 2x inside the cool-down stays quiet
    _failed_send_keeping_buffer(m)
    time.sleep(0.06)
    assert tick(m, d, t0 + 14) == []


def test_leaked_buffer_critical_above_byte_threshold():
    cfg = dataclasses.replace(CFG, leak_after=0.05, leak_critical_bytes=4096)
    m = Monitor()
    d = LeakedBufferDetector(cfg)
    for _ in range(5):
        _failed_send_keeping_buffer(m, 1024)
    time.sleep(0.06)
    [alert] = tick(m, d)
    assert alert.severity == "critical" and alert.evidence["bytes"] == 5120


# ---------------------------------------------------------------------------- stuck-op
def test_stuck_send_and_connect_but_not_accept_or_recv():
    cfg = dataclasses.replace(CFG, stuck_after=0.2)
    m = Monitor()
    d = StuckOpDetector(cfg)
    send = m.op_start(KIND_SEND, 6, 65536)
    conn = m.op_start(KIND_CONNECT, 8, 0)
    m.op_start(KIND_ACCEPT, 9, 0)          # an idle server: normal
    m.op_start(KIND_RECV, 10, 4096)        # an idle connection: normal
    assert tick(m, d) == []
    time.sleep(0.25)
    [alert] = tick(m, d)
    assert alert.kind == "stuck-op"
    ev = alert.evidence
    assert sorted(ev["op_ids"]) == sorted([send.op_id, conn.op_id])
    assert ev["kinds"] == {"send": 1, "connect": 1}
    assert ev["requested_bytes"] == 65536
    assert all(age >= 0.2 for age in ev["ages"])
    m.op_end(send, OUTCOME_COMPLETED, 65536)
    m.op_end(conn, OUTCOME_COMPLETED)
    assert tick(m, d, time.monotonic() + 100) == []


def test_stuck_kinds_are_configurable():
    cfg = dataclasses.replace(CFG, stuck_after=0.05, stuck_kinds=("accept",))
    m = Monitor()
    d = StuckOpDetector(cfg)
    m.op_start(KIND_ACCEPT, 9, 0)
    m.op_start(KIND_SEND, 6, 10)
    time.sleep(0.06)
    [alert] = tick(m, d)
    assert alert.evidence["kinds"] == {"accept": 1}


def test_an_op_just_under_the_threshold_is_not_stuck():
    cfg = dataclasses.replace(CFG, stuck_after=5.0)
    m = Monitor()
    d = StuckOpDetector(cfg)
    m.op_start(KIND_SEND, 6, 10)
    assert tick(m, d) == []


# ---------------------------------------------------------------------------- op-climb
def test_sign_test_values():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(0, 10) == 1.0
    assert sign_test_p(10, 10) == pytest.approx(2 ** -10)
    assert sign_test_p(5, 10) == pytest.approx(0.623046875)
    assert sign_test_p(9, 10) == pytest.approx(11 / 1024)
    assert climb_verdict([1, 2, 2, 3]) == (2, 2, 0.25, 2)
    assert climb_verdict([3, 2, 3, 2]) == (1, 3, 0.875, -1)


def _feed_counts(m: Monitor, d: OpClimbDetector, counts, t0: float, per_bucket: int = 20):
    """One count per bucket, sampled ``per_bucket`` times (50 ms ticks), the ops real."""
    live = []
    alerts = []
    for b, count in enumerate(counts):
        while len(live) < count:
            live.append(m.op_start(KIND_RECV, 100 + len(live), 10))
        while len(live) > count:
            m.op_end(live.pop(), OUTCOME_COMPLETED, 0)
        for k in range(per_bucket):
            alerts += tick(m, d, t0 + b * 1.0 + k * (1.0 / per_bucket))
    return alerts


def test_op_climb_fires_on_a_steady_climb():
    m = Monitor()
    d = OpClimbDetector(CFG)
    t0 = float(int(time.monotonic()))
    alerts = _feed_counts(m, d, [5 + i for i in range(30)], t0)
    assert alerts, "a 25-op steady climb over 30 s must be an op-climb"
    a = alerts[0]
    assert a.kind == "op-climb"
    assert a.evidence["ups"] == a.evidence["changes"] >= CFG.climb_min_changes
    assert a.evidence["p_value"] <= CFG.climb_alpha and a.evidence["rise"] >= CFG.climb_min_rise
    assert len(alerts) < 5                      # the gate holds the rest back


def test_op_climb_ignores_a_burst_a_step_noise_and_a_tiny_drift():
    t0 = float(int(time.monotonic()))
    cases = {
        "burst": [10] * 10 + [200, 150, 80, 10] + [10] * 16,
        "step": [10] * 10 + [100] * 20,
        "sawtooth": [10 + (i % 5) * 20 for i in range(30)],
        "noise": [10 + ((i * 7919) % 11) - 5 for i in range(30)],
        "drift of 3 ops": [10 + i // 10 for i in range(30)],
    }
    for name, counts in cases.items():
        m = Monitor()
        d = OpClimbDetector(CFG)
        assert _feed_counts(m, d, counts, t0) == [], name


def test_op_climb_min_changes_edge():
    """A clean climb with one change fewer than required stays quiet; with enough it fires."""
    cfg = dataclasses.replace(CFG, climb_window=12.0, climb_min_changes=12, climb_min_rise=1,
                              climb_alpha=0.01)
    t0 = float(int(time.monotonic()))
    m = Monitor()
    assert _feed_counts(m, OpClimbDetector(cfg), list(range(1, 14)), t0) == []  # 11 changes
    cfg2 = dataclasses.replace(cfg, climb_min_changes=11)
    m = Monitor()
    assert _feed_counts(m, OpClimbDetector(cfg2), list(range(1, 14)), t0 + 100)


def test_op_climb_window_slides_and_survives_missing_buckets():
    d = OpClimbDetector(CFG)                   # 20 buckets of 1 s
    t0 = 1000.0
    for i in range(25):
        d.add_sample(t0 + i, i)
    assert [b for b, _ in d._buckets] == list(range(1004, 1024))
    for i in range(25, 40, 3):                 # a collector that only ticks every 3 s
        d.add_sample(t0 + i, i)
    assert [b for b, _ in d._buckets] == list(range(1017, 1025)) + [1025, 1028, 1031, 1034]
    d.add_sample(t0 + 100, 0)                  # after a long stall the old window is gone
    assert len(d._buckets) == 0


def test_op_climb_needs_most_of_the_window():
    d = OpClimbDetector(CFG)
    m = Monitor()
    t0 = float(int(time.monotonic()))
    # a perfect climb seen for only 10 of the 20 s: no verdict yet
    assert _feed_counts(m, d, [5 + 2 * i for i in range(10)], t0) == []


# ---------------------------------------------------------------------------- loop-lag
def test_loop_lag_thresholds():
    cfg = dataclasses.replace(CFG, lag_window=5.0)
    for lags, expect in [
        ([0.002] * 50, None),
        ([0.009] * 50, None),                    # just under the median threshold
        ([0.010] * 50, "median"),                # at it
        ([0.001] * 49 + [0.099], None),          # max just under 100 ms
        ([0.001] * 49 + [0.100], "max"),
        ([0.001] * 3, None),                     # too few samples for a verdict
    ]:
        m = Monitor()
        d = LoopLagDetector(dataclasses.replace(cfg, lag_min_samples=5))
        for lag in lags:
            m.record_lag(lag)
        alerts = tick(m, d)
        if expect is None:
            assert alerts == [], lags[-1]
        else:
            [a] = alerts
            assert a.kind == "loop-lag" and expect in a.message
            assert a.evidence["samples"] == len(lags)
            assert a.evidence["max_lag"] == pytest.approx(max(lags))


def test_loop_lag_window_forgets_old_samples():
    m = Monitor()
    d = LoopLagDetector(CFG)
    m.record_lag(0.5)
    for _ in range(10):
        m.record_lag(0.001)
    assert len(tick(m, d)) == 1
    assert tick(m, d, time.monotonic() + CFG.lag_window + 1) == []   # the 0.5 s is out of the window


def test_loop_lag_critical_when_median_is_huge():
    m = Monitor()
    d = LoopLagDetector(CFG)
    for _ in range(10):
        m.record_lag(0.2)
    [a] = tick(m, d)
    assert a.severity == "critical"


# ---------------------------------------------------------------------------- the gate
def test_gate_rules():
    cfg = DetectorConfig(cooldown=30.0, growth_factor=2.0, min_refire_interval=2.0)
    g = AlertGate(cfg)
    assert g.check("k", 1, 100.0, persistent=True) == ""
    assert g.check("k", 1, 101.0, persistent=True) is None
    assert g.check("k", 5, 101.0, persistent=True) is None          # < min_refire_interval
    assert "grew from 1 to 5" in g.check("k", 5, 102.0, persistent=True)
    assert g.check("k", 9, 110.0, persistent=True) is None          # < 2x
    assert g.check("k", 5, 131.9, persistent=False) is None         # nothing new
    assert "still present" in g.check("k", 5, 132.0, persistent=True)
    assert g.check("other", 1, 132.0, persistent=True) == ""        # keys are independent
    g.forget("k")
    assert g.check("k", 1, 133.0, persistent=True) == ""


def test_leaked_buffer_scans_the_table_at_most_every_check_interval():
    cfg = dataclasses.replace(CFG, leak_after=0.05, leak_check_interval=0.2)
    m = Monitor()
    d = LeakedBufferDetector(cfg)
    t0 = time.monotonic()
    assert tick(m, d, t0) == []            # scanned: nothing yet
    _failed_send_keeping_buffer(m)
    time.sleep(0.06)
    assert tick(m, d, t0 + 0.1) == []      # leaked, but not scanned again yet
    assert len(tick(m, d, t0 + 0.2)) == 1


def test_lost_data_gap_excludes_abandoned_bytes_and_does_not_nag():
    cfg = dataclasses.replace(CFG, lost_gap_seconds=1.0, cooldown=5.0)
    m = Monitor()
    d = LostDataDetector(cfg)
    t0 = time.monotonic()
    m.op_inline(KIND_RECV, 10, 1 << 22, 1 << 22)
    m.bytes_abandoned = 1 << 22      # a loop that counts bytes of transports closed while paused
    assert all(tick(m, d, t0 + k * 0.1) == [] for k in range(30))
    m.bytes_abandoned = 0            # a loop that does not: the gap fires once, then stays quiet
    alerts = []
    for k in range(200):
        alerts += tick(m, d, t0 + 3 + k * 0.1)
    assert len(alerts) == 1 and alerts[0].severity == "warning"


def test_detectors_ask_for_events_only_when_the_counters_say_so():
    """``wants_events``: healthy traffic needs no events; a failure, a cancel, a discard or a
    large undelivered gap does (lost-data then notes reading fds)."""
    m = Monitor()
    lost, leak = LostDataDetector(CFG), LeakedBufferDetector(CFG)
    others = [StuckOpDetector(CFG), OpClimbDetector(CFG), LoopLagDetector(CFG)]
    m.op_inline(KIND_RECV, 5, 4096, 1000)
    m.delivered(1000)
    assert not lost.wants_events(m, False) and not leak.wants_events(m, False)
    assert lost.wants_events(m, True) and leak.wants_events(m, True)
    assert not any(d.wants_events(m, True) for d in others)
    m.op_inline(KIND_RECV, 5, 1 << 20, CFG.lost_gap_track_above)     # held: at the threshold
    assert not lost.wants_events(m, False)
    m.op_inline(KIND_RECV, 6, 4096, 1)                                # now above it
    assert lost.wants_events(m, False) and not leak.wants_events(m, False)
