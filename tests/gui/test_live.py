"""The widget against real targets: a child under ``python -m loopmon run``, and in-process.

Child processes run the demo workload; the widget attaches through ``loopmon.client`` on the
qasync loop (``qloop``), exactly as the app does.  Nothing here asserts timings: waits are
generous upper bounds on a shared 2-core machine.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from app.feeds import ENDED, FAILED, LIVE


def _graph_points(widget) -> int:
    return len(widget.model.recent)


def _attach_child(qtbot, widget, proc):
    feed = widget.attach(proc.pid, retry_for=20.0)
    qtbot.waitUntil(lambda: feed.state != "connecting", timeout=30_000)
    assert feed.state == LIVE, feed.detail
    return feed


def test_attach_to_a_real_child_graphs_fill_and_rows_come_and_go(qtbot, qloop, children):
    from app import LoopMonitorWidget
    proc = children.loopmon_run("-m", "loopmon.workloads.demo")
    widget = LoopMonitorWidget()
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    widget.show()
    _attach_child(qtbot, widget, proc)
    assert widget.model.hello.pid == proc.pid
    assert widget.model.hello.backend
    # graphs receive points
    qtbot.waitUntil(lambda: _graph_points(widget) > 20, timeout=30_000)
    widget.redraw_all()
    outstanding_curves = widget.graphs.outstanding.plot_item.listDataItems()
    assert outstanding_curves and max(len(c.xData) for c in outstanding_curves) > 20
    rows = widget.model.series(60.0)
    assert rows[-1, 3] > 0, "no bytes received by the demo?"
    # table rows come and go: op ids seen in the table change over time
    seen: set[int] = set()
    gone: set[int] = set()

    def rows_changed() -> bool:
        widget.redraw_details()
        now = {widget.table.model.op_at(r).op_id for r in range(widget.table.model.rowCount())}
        gone.update(seen - now)
        seen.update(now)
        return len(seen) > 5 and len(gone) > 3
    qtbot.waitUntil(rows_changed, timeout=30_000)
    assert widget.model.events_total > 0
    widget.detach()


def test_target_exit_keeps_history_and_reattach_works(qtbot, qloop, children):
    from app.window import MainWindow
    proc = children.loopmon_run("-m", "loopmon.workloads.demo")
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    feed = _attach_child(qtbot, win.monitor, proc)
    qtbot.waitUntil(lambda: _graph_points(win.monitor) > 10, timeout=30_000)
    proc.terminate()
    qtbot.waitUntil(lambda: feed.state == ENDED, timeout=30_000)
    points = _graph_points(win.monitor)
    assert points > 10, "history was dropped when the target exited"
    assert not win.monitor.model.connected
    assert "gone" in win.message_bar.text() and win.message_bar.isVisible()
    assert "disconnected" in win.status_state.text()
    # a new target: attach again
    proc2 = children.loopmon_run("-m", "loopmon.workloads.demo")
    _attach_child(qtbot, win.monitor, proc2)
    qtbot.waitUntil(lambda: win.monitor.model.hello.pid == proc2.pid
                    and _graph_points(win.monitor) > 5, timeout=30_000)
    win.close()


def test_dead_pid_and_bad_addresses_fail_with_a_message(qtbot, qloop, runtime_dir):
    from app.window import MainWindow
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    with socket.socket() as s:              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    for target in ("999999", f"127.0.0.1:{free_port}", "not an address", "unix:/nonexistent/x.sock"):
        win.attach(target)
        qtbot.waitUntil(lambda: win.monitor.feed.state == FAILED, timeout=20_000)
        assert win.last_error and "\n" not in win.last_error, win.last_error
        assert win.message_bar.isVisible()
    win.close()


def test_attach_monitor_in_process(qtbot, runtime_dir):
    """``attach_monitor``: an instrumented loop in a thread of this process."""
    import asyncio

    import loopmon
    from app import LoopMonitorWidget

    loop = loopmon.new_event_loop()
    monitor = loop.monitor
    stop = threading.Event()

    async def traffic():
        async def echo(reader, writer):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not stop.is_set():
            writer.write(b"x" * 1000)
            await reader.readexactly(1000)
            await asyncio.sleep(0.005)
        writer.close()
        server.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(traffic()), daemon=True)
    thread.start()
    widget = LoopMonitorWidget()
    qtbot.addWidget(widget)
    widget.show()
    try:
        feed = widget.attach_monitor(monitor)
        assert feed.state == LIVE
        qtbot.waitUntil(lambda: len(widget.model.recent) > 5
                        and widget.model.series(None)[-1, 3] > 0, timeout=20_000)
    finally:
        stop.set()
        thread.join(10)
        widget.detach()
        loop.close()
    assert not thread.is_alive()
