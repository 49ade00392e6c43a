"""Process figures read from /proc/self/stat agree with psutil's (the fallback)."""
from __future__ import annotations

import os
import sys
import threading
import time

import psutil
import pytest

from loopmon.telemetry.process_figures import ProcessFigures, _psutil_figures


def test_figures_agree_with_psutil():
    pf = ProcessFigures()
    proc = psutil.Process()
    proc.cpu_percent(None)
    pf.read()
    stop = threading.Event()
    workers = [threading.Thread(target=stop.wait) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        ballast = bytearray(64 << 20)            # 64 MiB touched: RSS moves
        ballast[::4096] = b"x" * len(ballast[::4096])
        t_end = time.monotonic() + 0.3
        while time.monotonic() < t_end:          # busy: CPU % near 100 for this thread
            pass
        rss, cpu, threads, fds = pf.read()
        p_rss, p_cpu, p_threads, p_fds = _psutil_figures(proc)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert abs(rss - p_rss) < 8 << 20 and rss > 64 << 20
    assert threads == p_threads >= 4
    if sys.platform.startswith("linux"):
        assert fds == p_fds - 1                   # psutil sees our kept /proc/self/stat fd
        assert cpu > 30.0                         # a loaded machine may steal some of it
    pf.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_reads_its_own_figures():
    pf = ProcessFigures()
    pf.read()
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()                                # the parent has >= 2 threads, the child 1
    assert pf.read()[2] >= 2
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # pragma: no cover - child
        try:
            os.write(w, str(pf.read()[2]).encode())
        finally:
            os._exit(0)
    os.close(w)
    threads_in_child = int(os.read(r, 100))
    os.close(r)
    os.waitpid(pid, 0)
    stop.set()
    helper.join()
    assert threads_in_child == 1                  # the child has only the forking thread
