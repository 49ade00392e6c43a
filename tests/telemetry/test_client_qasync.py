"""The client inside qasync (Qt's event loop driving asyncio), as the desktop app uses it."""
from __future__ import annotations

import os

import pytest

from telemetry_helpers import wait_discovered

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qasync = pytest.importorskip("qasync")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")


def test_client_under_qasync(children):
    import asyncio
    from loopmon import client as lmclient
    from loopmon.telemetry.messages import Goodbye, History, Sample

    p = children.workload("--duration", "2")
    wait_discovered(p.pid)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loop = qasync.QEventLoop(app)
    seen: list = []

    async def follow():
        c = await lmclient.connect(p.pid)
        seen.append(c.hello)
        async for msg in c:
            seen.append(msg)
        return c.end_reason
    try:
        reason = loop.run_until_complete(asyncio.wait_for(follow(), 30))
    finally:
        loop.close()
    assert isinstance(seen[1], History)
    assert sum(isinstance(m, Sample) for m in seen) >= 5
    assert isinstance(seen[-1], Goodbye) and reason.startswith("goodbye")
    with pytest.raises(lmclient.ConnectError):
        loop2 = qasync.QEventLoop(app)
        try:
            loop2.run_until_complete(lmclient.connect(999999))
        finally:
            loop2.close()
