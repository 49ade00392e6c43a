"""The client inside qasync (Qt's event loop driving asyncio), as the desktop app uses it.

Runs in a child interpreter: Qt objects in the shared pytest process can crash it at a later
garbage collection, and this suite must stay free of Qt state.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from telemetry_helpers import child_env, wait_discovered

pytest.importorskip("qasync")
pytest.importorskip("PySide6.QtWidgets")

SCRIPT = r'''
import asyncio, sys
from PySide6 import QtWidgets
import qasync
from loopmon import client as lmclient
from loopmon.telemetry.messages import Goodbye, History, Sample

app = QtWidgets.QApplication([])
loop = qasync.QEventLoop(app)
seen = []

async def follow():
    c = await lmclient.connect(int(sys.argv[1]))
    seen.append(c.hello)
    async for msg in c:
        seen.append(msg)
    try:
        await lmclient.connect(999999)
    except lmclient.ConnectError as exc:
        seen.append(str(exc))
    return c.end_reason

with loop:
    reason = loop.run_until_complete(asyncio.wait_for(follow(), 30))
assert isinstance(seen[1], History), seen[:2]
assert sum(isinstance(m, Sample) for m in seen) >= 5
assert isinstance(seen[-2], Goodbye) and reason.startswith("goodbye"), (seen[-2:], reason)
assert "pid 999999" in seen[-1]
print("ok")
'''


def test_client_under_qasync(children):
    p = children.workload("--duration", "2")
    wait_discovered(p.pid)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(p.pid)],
                       env=child_env(QT_QPA_PLATFORM="offscreen"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
