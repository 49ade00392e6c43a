"""SYNTHETIC telemetry: a fake target, for benchmarks and drawing tests only.

``SyntheticTarget`` fabricates the message stream a real agent would send — ``Hello``, a
``Sample`` every period, ``OpEvents`` batches at a chosen op rate (100 k ops/s for
``bench/gui.py``), periodic ``Outstanding`` snapshots and the odd ``Alert`` — from a small
simulation (sinusoidal load with bursts, a slow peer whose sends pile up).  Nothing in it
touches a socket or an event loop; it exists so the widgets can be drawn and measured at rates
and shapes a real program on a shared 2-core machine cannot produce on demand.

It is never used to stand in for a real target in the app: the window's sources are the
remote client, an in-process ``Monitor`` and recordings.  The ``Hello`` it sends says
``backend="synthetic"`` so a screenshot made from it can't be mistaken for the real thing.

Events carry the generator's ``time.monotonic()`` as their ``t``, so a consumer in the same
process can measure op-to-screen latency as ``time.monotonic() - t`` (the bench does).
"""
from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Optional

from loopmon.monitor.events import (
    EV_BUF_PIN, EV_BUF_RELEASE, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE, EV_OP_SUBMIT,
    FLAG_CANCEL_REQUESTED, KIND_ACCEPT, KIND_CONNECT, KIND_RECV, KIND_SEND, OUTCOME_CANCELLED,
    OUTCOME_COMPLETED, OUTCOME_FAILED, kind_name,
)
from loopmon.telemetry.messages import (
    PROTOCOL_MAJOR, PROTOCOL_MINOR, Alert, Hello, OpEvents, Outstanding, Sample,
)


class SyntheticTarget:
    """A deterministic-ish fake monitored process; call ``step()`` to advance it to now."""

    def __init__(self, ops_per_second: float = 100_000, sample_period: float = 0.05,
                 seed: int = 1, clock=time.monotonic) -> None:
        self.ops_per_second = ops_per_second
        self.sample_period = sample_period
        self.clock = clock
        self.rng = random.Random(seed)
        self.started_t = clock()
        self._last_step = self.started_t
        self._next_sample = self.started_t
        self._next_outstanding = self.started_t
        self._next_alert = self.started_t + 4.0
        self._seq = 0
        self._op_id = 0
        self._buf_id = 0
        self._pending: dict[int, tuple[int, int, float, int]] = {}  # op_id -> (kind, fd, t, buf)
        self._carry = 0.0
        self.counters: dict[str, Any] = dict(
            ops_outstanding=0, ops_outstanding_by_kind={}, ops_submitted=0, ops_completed=0,
            ops_cancelled=0, ops_failed=0, ops_inline=0, cancel_requests=0,
            late_completions=0, bytes_received=0, bytes_delivered=0, bytes_discarded=0,
            bytes_sent=0, buffers_live=0, buffer_bytes_live=0, loop_lag=0.0,
            loop_lag_max=0.0, events_dropped=0)

    def hello(self) -> Hello:
        return Hello(PROTOCOL_MAJOR, PROTOCOL_MINOR, os.getpid(), ["synthetic-target"],
                     "3.11", "synthetic", self.sample_period, self.started_t, time.time())

    def _ev(self, code: int, t: float, *fields: Any) -> tuple:
        self._seq += 1
        return (self._seq, code, t) + fields

    def _target_pending(self, x: float) -> int:
        """How many ops the simulation wants in flight at x seconds: waves plus bursts."""
        wave = 30 + 25 * math.sin(x / 3.0) + 10 * math.sin(x * 1.7)
        burst = 60 if (x % 10.0) < 1.5 else 0
        return max(0, int(wave + burst))

    def step(self, now: Optional[float] = None) -> list[Any]:
        """Advance the simulation to ``now``; returns the messages produced meanwhile."""
        now = self.clock() if now is None else now
        dt = now - self._last_step
        if dt <= 0:
            return []
        self._last_step = now
        out: list[Any] = []
        events: list[tuple] = []
        c = self.counters
        rng = self.rng
        x = now - self.started_t
        # inline completions: the bulk of the op rate
        want = self.ops_per_second * dt + self._carry
        n = int(want)
        self._carry = want - n
        ev_inline = EV_OP_INLINE
        seq, op_id = self._seq, self._op_id
        recv_bytes = 0
        span = dt / max(1, n)
        t_base = now - dt
        for i in range(n):
            seq += 1
            op_id += 1
            kind = KIND_RECV if i & 1 else KIND_SEND
            events.append((seq, ev_inline, t_base + i * span, op_id, kind, 7 + (i & 7), 4096,
                           OUTCOME_COMPLETED, 1024, ""))
            if kind == KIND_RECV:
                recv_bytes += 1024
        self._seq, self._op_id = seq, op_id
        c["ops_submitted"] += n
        c["ops_completed"] += n
        c["ops_inline"] += n
        c["bytes_received"] += recv_bytes
        c["bytes_delivered"] += recv_bytes
        # pending ops: start / end to follow the target curve
        target = self._target_pending(x)
        while len(self._pending) < target:
            self._op_id += 1
            kind = rng.choice((KIND_RECV, KIND_RECV, KIND_SEND, KIND_SEND, KIND_SEND,
                               KIND_ACCEPT, KIND_CONNECT))
            fd = rng.randint(8, 64)
            size = rng.choice((4096, 65536, 262144)) if kind == KIND_SEND else 65536
            events.append(self._ev(EV_OP_SUBMIT, now, self._op_id, kind, fd, size))
            self._buf_id += 1
            events.append(self._ev(EV_BUF_PIN, now, self._buf_id, self._op_id, size))
            c["buffer_bytes_live"] += size
            self._pending[self._op_id] = (kind, fd, now, self._buf_id, size)
            c["ops_submitted"] += 1
        excess = len(self._pending) - target
        if excess > 0:
            for oid in list(self._pending)[: excess]:
                kind, fd, t0, buf, size = self._pending.pop(oid)
                r = rng.random()
                if r < 0.05:
                    events.append(self._ev(EV_OP_CANCEL, now, oid))
                    events.append(self._ev(EV_OP_END, now, oid, OUTCOME_CANCELLED, 0, "",
                                           FLAG_CANCEL_REQUESTED))
                    c["ops_cancelled"] += 1
                elif r < 0.07:
                    events.append(self._ev(EV_OP_END, now, oid, OUTCOME_FAILED, 0,
                                           "ConnectionResetError", 0))
                    c["ops_failed"] += 1
                else:
                    events.append(self._ev(EV_OP_END, now, oid, OUTCOME_COMPLETED, size, "", 0))
                    c["ops_completed"] += 1
                    if kind == KIND_RECV:
                        c["bytes_received"] += size
                        c["bytes_delivered"] += size
                events.append(self._ev(EV_BUF_RELEASE, now, buf))
                c["buffer_bytes_live"] -= size
        if events:
            out.append(OpEvents(events))
        if now >= self._next_sample:
            self._next_sample = now + self.sample_period
            by_kind: dict[str, int] = {}
            for kind, *_ in self._pending.values():
                by_kind[kind_name(kind)] = by_kind.get(kind_name(kind), 0) + 1
            c["ops_outstanding"] = len(self._pending)
            c["ops_outstanding_by_kind"] = by_kind
            c["buffers_live"] = len(self._pending)
            c["loop_lag"] = 0.0008 + 0.0006 * abs(math.sin(x)) + (0.012 if (x % 10.0) < 0.3 else 0)
            rss = 48 * 2**20 + c["buffer_bytes_live"] + int(2**20 * math.sin(x / 7.0) ** 2)
            out.append(Sample(now, time.time(), dict(c), rss=rss, cpu_percent=35.0,
                              num_threads=3, num_fds=12 + len(self._pending)))
        if now >= self._next_outstanding:
            self._next_outstanding = now + 1.0
            ops = [dict(op_id=oid, kind=kind_name(k), fd=fd, requested=size, buffer_size=size,
                        age=now - t0, cancel_requested=False, peer=f"127.0.0.1:{40000 + fd}")
                   for oid, (k, fd, t0, _b, size) in self._pending.items()]
            out.append(Outstanding(now, ops))
        if now >= self._next_alert:
            self._next_alert = now + 9.0
            out.append(Alert("loop-lag", "warning", now, time.time(),
                             "synthetic: loop lag max 12 ms over the last 5 s",
                             {"max_ms": 12.0}))
        return out
