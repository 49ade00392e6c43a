"""The ``--demo`` child: a built-in workload run under ``python -m loopmon run``.

``DemoProcess(name)`` starts ``sys.executable -m loopmon run [--fault F] -m
loopmon.workloads.<module>`` with ``PYTHONPATH`` pointing at the loopmon we import ourselves, so
a checkout demos its own working tree.  The child runs in-process under ``loopmon run`` (like
``python -m cProfile``), so its pid is the pid to attach to; its discovery file appears a moment
after start, hence the feed's ``retry_for``.

The child must not outlive the app: ``stop()`` terminates, waits briefly, then kills, and it is
called from the window's close, from ``atexit`` and (through Python's default SIGTERM-less exit)
from ``app.main``'s shutdown.  Its stderr goes to a temp file so that a child that dies at once
can be explained in one line instead of a silent empty window.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import loopmon

DEMOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain": ("demo", ()),
    "cancel-race": ("cancel_race", ("cancel-drops-data",)),
    "send-leak": ("send_leak", ("send-keeps-buffer",)),
}


def demo_command(name: str, extra: tuple[str, ...] = ()) -> list[str]:
    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}: choose one of {', '.join(DEMOS)}")
    module, faults = DEMOS[name]
    cmd = [sys.executable, "-m", "loopmon", "run"]
    for fault in faults:
        cmd += ["--fault", fault]
    return cmd + ["-m", f"loopmon.workloads.{module}", *extra]


class DemoProcess:
    """One running demo workload (see the module docstring)."""

    def __init__(self, name: str = "plain", extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.command = demo_command(name, extra)
        self.proc: Optional[subprocess.Popen] = None
        self._stderr = None

    def start(self) -> int:
        env = dict(os.environ)
        root = str(Path(loopmon.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("QT_QPA_PLATFORM", None)
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        atexit.register(self.stop)
        return self.proc.pid

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def exited(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def error_tail(self, limit: int = 400) -> str:
        """The last line(s) of the child's stderr: why it died."""
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return (lines[-1] if lines else "")[-limit:]

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
