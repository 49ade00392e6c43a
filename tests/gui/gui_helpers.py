"""Helpers for the GUI tests (a uniquely named module: every test dir has its own conftest)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env(runtime_dir: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["LOOPMON_RUNTIME_DIR"] = runtime_dir
    env.pop("LOOPMON_FAULTS", None)
    return env



class Children:
    """Child processes started by a test; all killed at teardown."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = runtime_dir
        self.procs: list[subprocess.Popen] = []

    def loopmon_run(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "loopmon", "run", *args],
                                env=child_env(self.runtime_dir), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if proc.stderr:
                proc.stderr.close()
