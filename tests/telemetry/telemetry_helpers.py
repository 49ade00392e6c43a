"""Helpers for the telemetry tests: child processes under ``python -m loopmon run``."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("workload.py")


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Children:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def loopmon(self, *args: str, env: dict | None = None, cwd: str | None = None,
                stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "loopmon", *args], env=env or child_env(),
                             cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def workload(self, *args: str, run_opts: tuple = (), env: dict | None = None) -> subprocess.Popen:
        p = self.loopmon("run", *run_opts, str(WORKLOAD), *args, env=env)
        line = p.stdout.readline()
        assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=10)
            except Exception:
                pass


def wait_discovered(pid: int, timeout: float = 15.0):
    from loopmon.telemetry import discovery
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = discovery.find(pid)
        if entry is not None:
            return entry
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never appeared in discovery")


def run_async(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_until(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False

