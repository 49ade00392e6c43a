"""The Monitor's two cores -- C (``_loopmon_speedups``) and pure Python -- record the same.

Every test runs on both cores; a differential test drives both with the same random
sequence of op transitions and compares the events and counters they end up with.  The rest
of the suite exercises whichever core the install built (C on CI's 3.11; CI runs 3.10 with
``LOOPMON_PURE_PYTHON=1``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopmon.monitor import events as ev
from loopmon.monitor import recorder

CORES = [pytest.param(recorder.PyMonitor, id="python"),
         pytest.param(recorder.CMonitor, id="c",
                      marks=pytest.mark.skipif(recorder.CMonitor is None,
                                               reason="the C core is not built"))]


def _strip_time(events):
    return [e[:2] + e[3:] for e in events]


@pytest.mark.parametrize("Mon", CORES)
def test_op_lifecycle_events_and_counters(Mon):
    mon = Mon(ring_capacity=64, backend="test")
    mon.op_inline(ev.KIND_SEND, 5, 100, 100)
    rec = mon.op_start_pinned(ev.KIND_RECV_INTO, 5, 4096, 4096)
    assert rec.op_id == 2 and rec.buffer_id == 3 and rec.buf_id == 3 and rec.size == 4096
    snap = mon.snapshot()
    assert snap.ops_outstanding == 1 and snap.buffers_live == 1 and snap.buffer_bytes_live == 4096
    [info] = mon.outstanding()
    assert info.kind == "recv_into" and info.fd == 5 and info.age >= 0
    mon.op_cancel(rec)
    mon.op_cancel(rec)                       # a second request records nothing
    mon.op_end(rec, ev.OUTCOME_COMPLETED, 10, flags=ev.FLAG_DISCARDED)
    mon.op_end(rec, ev.OUTCOME_COMPLETED, 10)  # ended twice: ignored
    mon.delivered(7)
    got = _strip_time(mon.drain())
    assert got == [
        (1, ev.EV_OP_INLINE, 1, ev.KIND_SEND, 5, 100, ev.OUTCOME_COMPLETED, 100, ""),
        (2, ev.EV_OP_SUBMIT, 2, ev.KIND_RECV_INTO, 5, 4096),
        (3, ev.EV_BUF_PIN, 3, 2, 4096),
        (4, ev.EV_OP_CANCEL, 2),
        (5, ev.EV_OP_END, 2, ev.OUTCOME_COMPLETED, 10, "",
         ev.FLAG_DISCARDED | ev.FLAG_CANCEL_REQUESTED | ev.FLAG_LATE_COMPLETION),
        (6, ev.EV_DISCARD, 2, 10),
        (7, ev.EV_BUF_RELEASE, 3),
    ]
    snap = mon.snapshot()
    assert (snap.ops_submitted, snap.ops_completed, snap.ops_outstanding) == (2, 2, 0)
    assert (snap.bytes_sent, snap.bytes_received, snap.bytes_delivered,
            snap.bytes_discarded) == (100, 10, 7, 10)
    assert snap.late_completions == 1 and snap.cancel_requests == 1
    assert snap.buffers_live == 0 and snap.instrumentation_errors == 0


@pytest.mark.parametrize("Mon", CORES)
def test_timestamps_are_time_monotonic(Mon):
    import time
    mon = Mon()
    t0 = time.monotonic()
    mon.op_inline(ev.KIND_SEND, 1, 1, 1)
    t1 = time.monotonic()
    [(_, _, t, *_)] = mon.drain()
    assert t0 - 1e-6 <= t <= t1 + 1e-6


@pytest.mark.parametrize("Mon", CORES)
def test_ring_overflow_counts_drops_and_keeps_newest(Mon):
    mon = Mon(ring_capacity=8)
    for i in range(20):
        mon.op_inline(ev.KIND_SEND, 1, i, i)
    assert mon.events_queued() == 8
    first = mon.drain(3)
    assert [e[0] for e in first] == [13, 14, 15] and mon.events_dropped == 12
    rest = mon.drain()
    assert [e[0] for e in rest] == [16, 17, 18, 19, 20] and mon.events_queued() == 0
    assert mon.drain() == [] and mon.events_dropped == 12
    mon.op_inline(ev.KIND_SEND, 1, 1, 1)
    assert [e[0] for e in mon.drain()] == [21] and mon.snapshot().events_dropped == 12


@pytest.mark.parametrize("Mon", CORES)
def test_kept_buffer_outlives_its_op_until_released(Mon):
    mon = Mon()
    rec = mon.op_start_pinned(ev.KIND_SEND, 4, 1000, 1000)
    mon.op_end(rec, ev.OUTCOME_FAILED, 0, "BrokenPipeError", keep_buffer=True)
    [buf] = mon.live_buffers()
    assert buf.size == 1000 and buf.op_id == rec.op_id and buf.held_after_op_end >= 0
    assert mon.snapshot().ops_failed == 1
    mon.buffer_release(rec)
    assert mon.live_buffers() == []
    codes = [e[1] for e in mon.drain()]
    assert codes == [ev.EV_OP_SUBMIT, ev.EV_BUF_PIN, ev.EV_OP_END, ev.EV_BUF_RELEASE]


@pytest.mark.parametrize("Mon", CORES)
def test_rare_events_and_close(Mon):
    mon = Mon()
    mon.op_failed_inline(ev.KIND_CONNECT, 3, 0, ConnectionRefusedError())
    rec = mon.op_start(ev.KIND_ACCEPT, 6, 0)
    mon.buffer_pin(rec, 256)
    mon.discarded(5, rec.op_id)
    mon.abandoned(9)
    mon.record_lag(0.25)
    mon.drain_at_close()
    got = _strip_time(mon.drain())
    assert got[0] == (1, ev.EV_OP_INLINE, 1, ev.KIND_CONNECT, 3, 0, ev.OUTCOME_FAILED, 0,
                      "ConnectionRefusedError")
    assert [e[1] for e in got] == [ev.EV_OP_INLINE, ev.EV_OP_SUBMIT, ev.EV_BUF_PIN,
                                   ev.EV_DISCARD, ev.EV_OP_END, ev.EV_BUF_RELEASE]
    assert got[4][-1] == ev.FLAG_DRAINED_AT_CLOSE
    snap = mon.snapshot()
    assert snap.closed and snap.ops_outstanding == 0 and snap.buffers_live == 0
    assert snap.ops_failed == 1 and snap.ops_cancelled == 1
    assert snap.bytes_discarded == 5 and snap.bytes_abandoned == 9 and snap.loop_lag == 0.25


@pytest.mark.parametrize("Mon", CORES)
def test_bad_calls_are_swallowed_and_counted(Mon):
    mon = Mon()
    mon.op_inline(ev.KIND_SEND, 1, 1, None)
    mon.op_end(object(), ev.OUTCOME_COMPLETED)
    mon.op_cancel(42)
    mon.delivered("x")
    mon.op_end(None, ev.OUTCOME_COMPLETED)      # a failed op_start's None: silently nothing
    mon.op_cancel(None)
    snap = mon.snapshot()
    assert snap.instrumentation_errors == 4, snap
    assert snap.last_instrumentation_error.startswith("TypeError")   # from delivered("x")
    assert snap.bytes_delivered == 0


@pytest.mark.parametrize("Mon", CORES)
def test_failing_table_is_swallowed(Mon):
    mon = Mon()
    mon._fail_op_table = 1                  # the next insert fails, as on MemoryError
    assert mon.op_start_pinned(ev.KIND_RECV, 1, 10, 10) is None
    assert mon.instrumentation_errors == 1
    assert "op table insert failed" in mon.last_instrumentation_error
    assert mon.drain() == []
    rec = mon.op_start(ev.KIND_RECV, 1, 10)  # and the one after works
    assert rec is not None and mon.snapshot().ops_outstanding == 1


@pytest.mark.parametrize("Mon", CORES)
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10 ** 6)), max_size=600))
def test_op_table_follows_any_order_of_starts_and_ends(Mon, steps):
    """The op table (in C: open addressing with backward-shift deletion, growing and
    shrinking) always holds exactly the ops in flight, whatever order they end in."""
    mon = Mon()
    live: dict = {}
    ended: list = []
    for start, pick in steps:
        if start or not live:
            rec = mon.op_start(ev.KIND_RECV, 3, 10)
            live[rec.op_id] = rec
        else:
            op_id = sorted(live)[pick % len(live)]
            rec = live.pop(op_id)
            mon.op_end(rec, ev.OUTCOME_COMPLETED, 1)
            ended.append(rec)
    assert sorted(r.op_id for r in mon._outstanding_records()) == sorted(live)
    assert all(mon._is_outstanding(r) for r in live.values())
    assert not any(mon._is_outstanding(r) for r in ended)
    probe = set(live) | {r.op_id for r in ended[-50:]} | {0, 10 ** 9}
    assert mon.not_in_flight(probe) == probe - set(live)
    for rec in ended[-20:]:
        mon.op_end(rec, ev.OUTCOME_COMPLETED, 1)        # ended twice: ignored
    snap = mon.snapshot()
    assert snap.ops_outstanding == len(live) and snap.ops_completed == len(ended)
    mon.drain_at_close()
    assert mon._outstanding_records() == [] and mon.snapshot().ops_outstanding == 0


@pytest.mark.parametrize("Mon", CORES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_op_table_random_walk_through_growth_and_shrinking(Mon, seed):
    """Long random walks: thousands in flight (the table grows), then back to a few (it
    shrinks), ends in random order -- checked against a plain dict along the way."""
    import random
    rng = random.Random(seed)
    mon = Mon()
    live: dict = {}
    for step in range(12000):
        p_start = 0.7 if step < 5000 else 0.3           # up to ~2000 in flight, then down
        if rng.random() < p_start or not live:
            rec = mon.op_start(ev.KIND_RECV, 3, 10)
            live[rec.op_id] = rec
        else:
            rec = live.pop(rng.choice(list(live)))
            mon.op_end(rec, ev.OUTCOME_COMPLETED, 1)
            assert not mon._is_outstanding(rec)
        if step % 97 == 0:
            assert sorted(r.op_id for r in mon._outstanding_records()) == sorted(live)
            assert all(mon._is_outstanding(r) for r in live.values())
    assert mon.snapshot().ops_outstanding == len(live)


@pytest.mark.parametrize("Mon", CORES)
def test_error_names_travel_with_their_events(Mon):
    mon = Mon()
    for name in ("BrokenPipeError", "ConnectionResetError", "BrokenPipeError", ""):
        rec = mon.op_start(ev.KIND_SEND, 4, 10)
        mon.op_end(rec, ev.OUTCOME_FAILED, 0, name)
    mon.op_failed_inline(ev.KIND_RECV, 4, 10, TimeoutError("x"))
    ends = [e for e in mon.drain() if e[1] in (ev.EV_OP_END, ev.EV_OP_INLINE)]
    assert [e[6] if e[1] == ev.EV_OP_END else e[-1] for e in ends] == [
        "BrokenPipeError", "ConnectionResetError", "BrokenPipeError", "", "TimeoutError"]


@pytest.mark.skipif(recorder.CMonitor is None, reason="the C core is not built")
def test_c_string_table_stays_bounded():
    """The C ring stores a string field as an index into a per-monitor table (error type
    names: few distinct values).  A program inventing endless names cannot grow it."""
    mon = recorder.CMonitor(ring_capacity=1 << 15)
    for i in range(5000):
        rec = mon.op_start(ev.KIND_SEND, 4, 10)
        mon.op_end(rec, ev.OUTCOME_FAILED, 0, f"Error{i}")
    names = [e[6] for e in mon.drain() if e[1] == ev.EV_OP_END]
    assert names[:3] == ["Error0", "Error1", "Error2"]
    assert len(set(names)) <= 4096
    assert names[-1].startswith("(more distinct error names")
    assert mon.instrumentation_errors == 0 and mon.snapshot().ops_outstanding == 0


@pytest.mark.parametrize("Mon", CORES)
def test_ring_doubles_when_a_drain_finds_drops(Mon):
    """The default ring is small (cache-friendly) and doubles, up to ring_max, each time a
    drain finds that the writer lapped it; an explicit ring_capacity stays fixed."""
    mon = Mon()
    assert (mon.ring_capacity, mon.ring_max) == (recorder.RING_CAPACITY, recorder.RING_MAX)
    cap = mon.ring_capacity
    for _ in range(cap + 10):
        mon.op_inline(ev.KIND_SEND, 3, 1, 1)
    got = mon.drain()
    assert len(got) == cap and mon.events_dropped == 10 and mon.ring_capacity == 2 * cap
    for _ in range(2 * cap):                 # now fits: nothing more is lost
        mon.op_inline(ev.KIND_SEND, 3, 1, 1)
    got = mon.drain()
    assert len(got) == 2 * cap and mon.events_dropped == 10
    assert [e[0] for e in got] == list(range(got[0][0], got[0][0] + 2 * cap))
    for _ in range(8):                       # never past ring_max
        for _ in range(mon.ring_capacity + 1):
            mon.op_inline(ev.KIND_SEND, 3, 1, 1)
        mon.drain()
    assert mon.ring_capacity == recorder.RING_MAX
    fixed = Mon(ring_capacity=16)
    for _ in range(40):
        fixed.op_inline(ev.KIND_SEND, 3, 1, 1)
    assert len(fixed.drain()) == 16 and fixed.events_dropped == 24 and fixed.ring_capacity == 16


@pytest.mark.parametrize("Mon", CORES)
def test_stream_receive_shorthands_record_what_the_long_forms_do(Mon):
    """op_start_recv(fd, n) is op_start_pinned(KIND_RECV_INTO, fd, n, n); op_done(rec, n) is
    op_end(rec, OUTCOME_COMPLETED, n): same events, same counters."""
    short, long = Mon(), Mon()
    a = short.op_start_recv(7, 65536)
    b = long.op_start_pinned(ev.KIND_RECV_INTO, 7, 65536, 65536)
    short.op_cancel(a)
    long.op_cancel(b)
    short.op_done(a, 100)
    long.op_end(b, ev.OUTCOME_COMPLETED, 100)
    short.op_done(a, 100)                    # ended twice: ignored by both
    short.op_done(None, 5)                   # a failed start's None: nothing
    assert _strip_time(short.drain()) == _strip_time(long.drain())
    assert short.snapshot().bytes_received == long.snapshot().bytes_received == 100
    assert short.snapshot().late_completions == 1
    short.op_done(object(), 1)               # a bad record: swallowed and counted
    assert short.instrumentation_errors == 1 and short.snapshot().ops_outstanding == 0


@pytest.mark.parametrize("Mon", CORES)
def test_send_whole_records_a_whole_send_and_nothing_else(Mon):
    """send_whole(sock, data) is sock.send(data) + op_inline(KIND_SEND, fd, n, n) when all of
    data went out; a partial send and the socket's own exception record nothing (the
    caller pends the rest, or handles the error) -- on real sockets."""
    import socket
    mon, ref = Mon(), Mon()
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        assert mon.send_whole(a, b"hello") == 5
        ref.op_inline(ev.KIND_SEND, a.fileno(), 5, 5)
        assert mon.send_whole(a, memoryview(b"xy" * 4).cast("H")) == 8   # bytes, not items
        ref.op_inline(ev.KIND_SEND, a.fileno(), 8, 8)
        assert b.recv(100) == b"hello" + b"xy" * 4
        assert _strip_time(mon.drain()) == _strip_time(ref.drain())
        assert mon.snapshot().bytes_sent == 13
        big = bytes(8 << 20)                 # more than the socket buffers take at once
        n = mon.send_whole(a, big)
        assert 0 < n < len(big)
        assert mon.drain() == [] and mon.snapshot().bytes_sent == 13
        with pytest.raises(BlockingIOError):
            mon.send_whole(a, big)           # the socket's own exception, unchanged
        assert mon.drain() == [] and mon.instrumentation_errors == 0
    finally:
        a.close()
        b.close()
    with pytest.raises(OSError):
        mon.send_whole(a, b"late")           # a closed socket: EBADF, as sock.send raises
    assert mon.drain() == [] and mon.instrumentation_errors == 0


@pytest.mark.parametrize("Mon", CORES)
def test_send_whole_calls_the_sockets_own_send_even_when_it_changes(Mon):
    """The C core keeps the socket type's send/recv_into/fileno between calls (as the
    interpreter's method caches do): a subclass that overrides them, and a class changed
    after the first call, must still get their own methods called."""
    import socket
    calls = []

    class Traced(socket.socket):
        __slots__ = ()

    mon = Mon()
    a, b = socket.socketpair()
    t = Traced(fileno=a.detach())
    fd = t.fileno()
    try:
        assert mon.send_whole(t, b"one") == 3          # the builtin send, through the cache
        assert mon.send_whole(t, b"two") == 3

        def send(self, data, flags=0):
            calls.append(bytes(data))
            return socket.socket.send(self, data, flags)
        Traced.send = send                              # the type changed under the cache
        assert mon.send_whole(t, b"three") == 5
        assert calls == [b"three"]
        del Traced.send
        assert mon.send_whole(t, b"four") == 4 and calls == [b"three"]
        Traced.fileno = lambda self: 12345
        assert mon.send_whole(t, b"five") == 4
        assert b.recv(100) == b"onetwothreefourfive"
        fds = [e[5] for e in mon.drain()]
        assert fds == [fd] * 4 + [12345]
        assert mon.instrumentation_errors == 0
    finally:
        t.close()
        b.close()


@pytest.mark.parametrize("Mon", CORES)
def test_recv_into_done_ends_the_op_with_what_arrived(Mon):
    """recv_into_done(rec, sock, buf) is sock.recv_into(buf) + op_done(rec, n); when the
    socket raises, the exception is the caller's and the op stays in flight."""
    import socket
    mon, ref = Mon(), Mon()
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        buf = bytearray(64)
        rec, rref = mon.op_start_recv(b.fileno(), 64), ref.op_start_recv(b.fileno(), 64)
        with pytest.raises(BlockingIOError):
            mon.recv_into_done(rec, b, buf)
        assert mon.snapshot().ops_outstanding == 1 and mon.instrumentation_errors == 0
        a.send(b"abc")
        assert mon.recv_into_done(rec, b, buf) == 3 and bytes(buf[:3]) == b"abc"
        ref.op_done(rref, 3)
        assert _strip_time(mon.drain()) == _strip_time(ref.drain())
        snap = mon.snapshot()
        assert snap.ops_outstanding == 0 and snap.bytes_received == 3
        a.send(b"de")
        assert mon.recv_into_done(None, b, buf) == 2    # a failed start's None: no record
        a.send(b"f")
        assert mon.recv_into_done(object(), b, buf) == 1   # a bad record: swallowed
        assert mon.instrumentation_errors == 1 and mon.drain() == []
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("Mon", CORES)
def test_emit_checks_the_layout(Mon):
    mon = Mon()
    if Mon is recorder.CMonitor:
        with pytest.raises(ValueError):
            mon._emit(ev.EV_OP_CANCEL, 1.0, 1, 2)
    mon.discarded(3)    # goes through _emit with the right layout
    [(_, code, _, op_id, n)] = mon.drain()
    assert (code, op_id, n) == (ev.EV_DISCARD, 0, 3)


# one step of a random op history: (action, a, b)
_steps = st.lists(st.tuples(st.sampled_from(["inline", "start", "pinned", "cancel", "end",
                                             "end_keep", "release", "deliver", "drain",
                                             "drain_notable", "fail_inline", "range",
                                             "start_recv", "done"]),
                            st.integers(0, 11), st.integers(0, 1 << 20)),
                  max_size=60)


@pytest.mark.skipif(recorder.CMonitor is None, reason="the C core is not built")
@settings(max_examples=150, deadline=None)
@given(_steps, st.integers(1, 40), st.integers(0, 3))
def test_both_cores_record_the_same_history(steps, capacity, doublings):
    ring = dict(ring_capacity=capacity, ring_max=capacity << doublings)   # may grow on drops
    mons = [recorder.PyMonitor(**ring), recorder.CMonitor(**ring)]
    recs: list[list] = [[], []]
    drained: list[list] = [[], []]
    for action, kind, n in steps:
        for i, mon in enumerate(mons):
            live = recs[i]
            if action == "inline":
                mon.op_inline(kind, 3, n, n)
            elif action in ("start", "pinned"):
                live.append(mon.op_start(kind, 3, n) if action == "start"
                            else mon.op_start_pinned(kind, 3, n, n))
            elif action == "start_recv":
                live.append(mon.op_start_recv(3, n))
            elif action == "done" and live:
                mon.op_done(live.pop(n % len(live)), n % 5000)
            elif action == "cancel" and live:
                mon.op_cancel(live[n % len(live)])
            elif action in ("end", "end_keep") and live:
                mon.op_end(live.pop(n % len(live)), 1 + n % 3, n % 5000,
                           "" if n % 3 != 2 else "OSError", n & ev.FLAG_DISCARDED,
                           keep_buffer=action == "end_keep")
            elif action == "release" and live:
                mon.buffer_release(live[n % len(live)])
            elif action == "deliver":
                mon.delivered(n)
            elif action == "drain":
                drained[i] += _strip_time(mon.drain(n % 7 + 1))
            elif action == "drain_notable":
                drained[i] += _strip_time(mon.drain_notable(n % 7 + 1))
            elif action == "range":
                first, part = mon.drain_range(kind % 4, kind % 4 + n % 5, n % 9)
                drained[i].append(("range", first))
                drained[i] += _strip_time(part)
            elif action == "fail_inline":
                mon.op_failed_inline(kind, 3, n, OSError())
    for i, mon in enumerate(mons):
        drained[i] += _strip_time(mon.drain())
    assert drained[0] == drained[1]
    a, b = (m.snapshot() for m in mons)
    for field in ("ops_outstanding", "ops_outstanding_by_kind", "ops_submitted", "ops_completed",
                  "ops_cancelled", "ops_failed", "bytes_received", "bytes_delivered",
                  "bytes_sent", "bytes_discarded", "buffers_live", "buffer_bytes_live",
                  "events_dropped", "cancel_requests", "late_completions",
                  "instrumentation_errors"):
        assert getattr(a, field) == getattr(b, field), field
    assert mons[0].ring_capacity == mons[1].ring_capacity


def test_c_core_constants_match_events():
    if recorder.CMonitor is None:
        pytest.skip("the C core is not built")
    import _loopmon_speedups
    for name, value in _loopmon_speedups.CONSTANTS.items():
        assert getattr(ev, name) == value, name


def test_c_core_is_built_where_a_compiler_exists():
    """An install on a machine with a C compiler must get the C core (it is 'optional' so that
    installs without one still work -- which must not hide a broken build everywhere)."""
    if os.environ.get("LOOPMON_PURE_PYTHON", "").strip() not in ("", "0"):
        assert recorder.IMPLEMENTATION == "python"
        return
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) here: the pure-Python core is expected")
    assert recorder.IMPLEMENTATION == "c", (
        "the C core _loopmon_speedups is not importable: install the package (pip install .) "
        "or, in a checkout, build it in place: python setup.py build_ext --inplace")


def test_pure_python_switch_in_a_child_process():
    env = dict(os.environ, LOOPMON_PURE_PYTHON="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c",
                          "import loopmon.monitor as m; print(m.IMPLEMENTATION)"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "python", out.stderr


@pytest.mark.parametrize("Mon", CORES)
def test_peers_noted_per_fd_show_in_outstanding(Mon):
    mon = Mon()
    mon.note_peer(9, "127.0.0.1:8080")
    a = mon.op_start_pinned(ev.KIND_RECV_INTO, 9, 10, 10)
    b = mon.op_start(ev.KIND_ACCEPT, 4, 0)
    assert [(i.fd, i.peer) for i in mon.outstanding()] == [(9, "127.0.0.1:8080"), (4, None)]
    mon.forget_peer(9)
    mon.forget_peer(123)            # never noted: nothing happens
    assert [i.peer for i in mon.outstanding()] == [None, None]
    mon.op_end(a, ev.OUTCOME_COMPLETED, 1)
    mon.op_end(b, ev.OUTCOME_CANCELLED)
    assert mon.snapshot().instrumentation_errors == 0


@pytest.mark.parametrize("Mon", CORES)
def test_drain_notable_takes_everything_and_returns_the_unusual(Mon):
    mon = Mon(ring_capacity=64)
    mon.op_inline(ev.KIND_SEND, 1, 10, 10)                       # ordinary
    mon.op_failed_inline(ev.KIND_SEND, 1, 10, BrokenPipeError())  # notable
    ok = mon.op_start_pinned(ev.KIND_RECV, 1, 10, 10)
    mon.op_end(ok, ev.OUTCOME_COMPLETED, 5)                       # ordinary (+ pin, release)
    bad = mon.op_start(ev.KIND_ACCEPT, 2, 0)
    mon.op_end(bad, ev.OUTCOME_FAILED, 0, "OSError")              # notable
    late = mon.op_start_pinned(ev.KIND_RECV, 1, 10, 10)
    mon.op_cancel(late)                                          # notable
    mon.op_end(late, ev.OUTCOME_COMPLETED, 4, flags=ev.FLAG_DISCARDED)  # notable x2 (+ release)
    drained_at_close = mon.op_start(ev.KIND_RECV, 1, 10)
    mon.drain_at_close()                                          # notable (flag)
    got = mon.drain_notable()
    assert [(e[1], e[3]) for e in got] == [
        (ev.EV_OP_INLINE, 2), (ev.EV_OP_END, bad.op_id), (ev.EV_OP_CANCEL, late.op_id),
        (ev.EV_OP_END, late.op_id), (ev.EV_DISCARD, late.op_id),
        (ev.EV_OP_END, drained_at_close.op_id)]
    assert mon.events_queued() == 0 and mon.drain() == [] and mon.events_dropped == 0


@pytest.mark.parametrize("Mon", CORES)
def test_drain_range_builds_only_the_window(Mon):
    mon = Mon(ring_capacity=16)
    for i in range(20):                    # 4 overwritten
        mon.op_inline(ev.KIND_SEND, 1, i, i)
    first, part = mon.drain_range(2, 5, 10)
    assert first == 5 and [e[0] for e in part] == [7, 8, 9] and mon.events_dropped == 4
    assert mon.events_queued() == 6        # 10 taken, 6 left
    first, part = mon.drain_range(0, 0)    # consume without building anything
    assert first == 15 and part == [] and mon.events_queued() == 0
    first, part = mon.drain_range(0, 100)
    assert first == 21 and part == []
    mon.op_inline(ev.KIND_SEND, 1, 1, 1)
    assert [e[0] for e in mon.drain_range(0, 100)[1]] == [21]
