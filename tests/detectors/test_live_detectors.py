"""stuck-op, op-climb and loop-lag on a real loop with real sockets (shortened windows).

The fault tests cover lost-data and leaked-buffer; these make the other three conditions
happen for real — a send to a peer that never reads, receives that pile up, a loop blocked by
``time.sleep`` — with thresholds shortened through ``DetectorConfig`` so the file stays fast.
"""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import time

from detector_rig import run_workload
from loopmon.detectors import DetectorConfig

FAST = dataclasses.replace(DetectorConfig(), stuck_after=0.5, climb_window=4.0,
                           climb_bucket=0.5, climb_min_changes=6, climb_alpha=0.01,
                           lag_window=2.0)


async def send_to_a_peer_that_never_reads(argv: list[str]) -> int:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        send = asyncio.ensure_future(loop.sock_sendall(a, b"x" * (32 << 20)))
        await asyncio.sleep(float(argv[0]))
        assert not send.done(), "the send should still be pending: nobody reads"
        send.cancel()
        await asyncio.gather(send, return_exceptions=True)
    finally:
        a.close()
        b.close()
    return 0


def test_stuck_send():
    run = run_workload(send_to_a_peer_that_never_reads, ["2.0"], config=FAST)
    assert run.detector_errors == 0, run.last_detector_error
    stuck = run.of_kind("stuck-op")
    assert stuck, [a.kind for a in run.alerts]
    ev = stuck[0].evidence
    assert ev["kinds"] == {"send": 1} and len(ev["op_ids"]) == 1
    assert ev["ages"][0] >= FAST.stuck_after
    assert ev["requested_bytes"] > 0
    print(f"\nstuck-op after {stuck[0].t - run.started_t:.2f} s: {stuck[0].message}")
    assert not run.of_kind("lost-data") and not run.of_kind("leaked-buffer")


async def receives_that_pile_up(argv: list[str]) -> int:
    """Every 100 ms a new connection whose receive never completes (a forgotten reader)."""
    loop = asyncio.get_running_loop()
    pairs, recvs = [], []
    deadline = time.monotonic() + float(argv[0])
    try:
        while time.monotonic() < deadline:
            a, b = socket.socketpair()
            a.setblocking(False)
            pairs.append((a, b))
            recvs.append(asyncio.ensure_future(loop.sock_recv(a, 1024)))
            await asyncio.sleep(0.1)
    finally:
        for r in recvs:
            r.cancel()
        await asyncio.gather(*recvs, return_exceptions=True)
        for a, b in pairs:
            a.close()
            b.close()
    return len(recvs)


def test_op_climb():
    run = run_workload(receives_that_pile_up, ["6.0"], config=FAST)
    assert run.detector_errors == 0, run.last_detector_error
    climb = run.of_kind("op-climb")
    assert climb, [a.kind for a in run.alerts]
    ev = climb[0].evidence
    assert ev["p_value"] <= FAST.climb_alpha and ev["rise"] >= FAST.climb_min_rise
    print(f"\nop-climb after {climb[0].t - run.started_t:.2f} s: {climb[0].message}")
    assert len(climb) <= 3


async def a_loop_blocked_by_sleep(argv: list[str]) -> int:
    await asyncio.sleep(0.5)
    time.sleep(0.3)            # the program blocks its own loop: 300 ms of lag
    await asyncio.sleep(1.0)
    return 0


def test_loop_lag():
    run = run_workload(a_loop_blocked_by_sleep, [], config=FAST)
    assert run.detector_errors == 0, run.last_detector_error
    lag = run.of_kind("loop-lag")
    assert lag, f"no loop-lag alert; lag samples max {max((s[1] for s in run.lag_samples), default=None)}"
    assert lag[0].evidence["max_lag"] >= 0.25
    print(f"\nloop-lag: {lag[0].message}")
