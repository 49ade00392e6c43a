"""Fixtures for the telemetry tests: real child processes under ``python -m loopmon run``.

Every test gets its own runtime dir (``LOOPMON_RUNTIME_DIR``), so discovery sees only its own
children and never another engineer's processes.  Children are killed at teardown.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from telemetry_helpers import Children


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch):
    # short path: Unix socket paths are limited to ~104 bytes
    d = tempfile.mkdtemp(prefix="lmt-")
    monkeypatch.setenv("LOOPMON_RUNTIME_DIR", d)
    yield d
    for p in Path(d).glob("*"):
        try:
            p.unlink()
        except OSError:
            pass
    try:
        os.rmdir(d)
    except OSError:
        pass


@pytest.fixture
def children(runtime_dir):
    c = Children()
    yield c
    c.kill_all()
