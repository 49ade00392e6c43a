"""Every widget builds and draws; the table updates in place; the window exports.

Drawing tests use the SYNTHETIC feed (``app.synthetic``): real targets are in test_live.py.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gui_helpers import child_env


def test_importing_app_creates_no_application(runtime_dir):
    code = ("import app, app.widgets, app.window\n"
            "from app import LoopMonitorWidget, OutstandingOpsTable, MemoryGraph\n"
            "from PySide6.QtWidgets import QApplication\n"
            "import asyncio\n"
            "assert QApplication.instance() is None, 'QApplication created at import'\n"
            "assert asyncio._get_running_loop() is None\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(runtime_dir),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("name", ["OutstandingOpsGraph", "MemoryGraph", "ReceivedDataGraph",
                                  "LoopLagGraph", "GraphPanel", "OutstandingOpsTable",
                                  "OperationTimeline", "AlertsPanel", "LoopMonitorWidget"])
def test_each_widget_builds_and_draws_an_empty_model(qtbot, name):
    import app
    from app.model import SessionModel
    widget = getattr(app, name)()
    qtbot.addWidget(widget)
    widget.show()
    model = SessionModel()
    if hasattr(widget, "refresh"):
        if name in ("OutstandingOpsGraph", "MemoryGraph", "ReceivedDataGraph", "LoopLagGraph"):
            widget.refresh(model.series(60.0), model)
        else:
            widget.refresh(model)
    qtbot.wait(20)


def _curve_points(graph) -> int:
    return max((len(item.xData) for item in graph.plot_item.listDataItems()
                if item.xData is not None), default=0)


def test_monitor_widget_draws_synthetic_stream(qtbot):
    from app import LoopMonitorWidget
    widget = LoopMonitorWidget()
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    widget.show()
    widget.attach_synthetic(ops_per_second=20_000)
    qtbot.waitUntil(lambda: len(widget.model.recent) > 20, timeout=15_000)
    qtbot.waitUntil(lambda: widget.table.model.rowCount() > 0, timeout=15_000)
    widget.redraw_all()
    for graph in widget.graphs.graphs:
        assert _curve_points(graph) > 10, type(graph).__name__
    assert widget.timeline.shown > 0
    assert widget.frames > 0
    lo, hi = widget.graphs.x_range()
    assert hi > lo
    widget.detach()
    assert not widget.model.connected


def test_table_updates_in_place_and_keeps_the_selection(qtbot):
    from app import OutstandingOpsTable
    from app.model.ops import OpRow
    table = OutstandingOpsTable()
    qtbot.addWidget(table)
    table.show()
    resets = []
    table.model.modelReset.connect(lambda: resets.append(1))

    class Session:
        def __init__(self):
            self.ops = type("Ops", (), {})()
            self.ops.rows = {}
            self.now = 100.0

        def target_now(self):
            return self.now

    s = Session()
    for i in range(1, 21):
        s.ops.rows[i] = OpRow(i, "recv", i, 100, 100, 100.0 - i * 0.1)
    table.refresh(s)
    assert table.model.rowCount() == 20
    table.filter_edit.setText("")
    # select op 7
    for row in range(table.proxy.rowCount()):
        idx = table.proxy.index(row, 0)
        if idx.data() == "7":
            table.view.selectRow(row)
    assert table.selected_op_ids() == [7]
    # ops come and go around it, ages move, the row order changes (sorted by age)
    for step in range(10):
        s.now += 0.1
        for op_id in list(s.ops.rows):
            if op_id != 7 and (op_id + step) % 3 == 0:
                del s.ops.rows[op_id]
        for j in range(3):
            new_id = 100 + step * 3 + j
            s.ops.rows[new_id] = OpRow(new_id, "send", 50, 10, 10, s.now)
        table.refresh(s)
        assert table.selected_op_ids() == [7]
        assert table.model.rowCount() == len(s.ops.rows)
    assert not resets, "the model was reset: selection and scroll would be lost"
    # long-pending rows are highlighted; the filter works
    from PySide6.QtCore import Qt
    row7 = table.model._index[7]
    assert table.model.data(table.model.index(row7, 0), Qt.ItemDataRole.BackgroundRole) is not None
    table.filter_edit.setText("send")
    assert 0 < table.proxy.rowCount() < table.model.rowCount()


def test_manual_zoom_pauses_and_live_resumes(qtbot):
    from app import GraphPanel
    panel = GraphPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert not panel.paused
    panel.graphs[1].plot_item.vb.sigRangeChangedManually.emit([True, False])
    assert panel.paused and panel.pause_button.text() == "Live"
    panel.go_live()
    assert not panel.paused
    panel.set_window(None)
    assert panel.window_seconds is None
    panel.set_window(10.0)
    assert panel.window_seconds == 10.0
    with pytest.raises(ValueError):
        panel.set_window(7.0)


def test_window_exports_png_and_csv(qtbot, tmp_path, runtime_dir):
    from PySide6.QtGui import QImage
    from app.window import MainWindow
    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    win.monitor.attach_synthetic(ops_per_second=10_000)
    qtbot.waitUntil(lambda: len(win.monitor.model.recent) > 20, timeout=15_000)
    png = tmp_path / "w.png"
    assert win.export_png(str(png))
    img = QImage(str(png))
    assert img.width() >= 1000 and img.height() >= 700
    assert _pixel_std(img) > 10, "the screenshot looks blank"
    n = win.export_csv(str(tmp_path / "s.csv"))
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert n > 20 and lines[0].startswith("t,rss,") and len(lines) == n + 1


def _pixel_std(img) -> float:
    from PySide6.QtGui import QImage
    img = img.convertToFormat(QImage.Format.Format_RGB32)
    ptr = img.constBits()
    arr = np.frombuffer(ptr, dtype=np.uint8, count=img.sizeInBytes())
    return float(arr.reshape(img.height(), -1)[:, : img.width() * 4].std())


def test_graphs_follow_the_palette_light_and_dark(qtbot):
    from PySide6.QtGui import QColor, QPalette
    from app import MemoryGraph, OperationTimeline
    for base, text in (("#ffffff", "#000000"), ("#1e1e1e", "#e0e0e0")):
        pal = QPalette()
        pal.setColor(QPalette.ColorRole.Base, QColor(base))
        pal.setColor(QPalette.ColorRole.Text, QColor(text))
        for cls in (MemoryGraph, OperationTimeline):
            w = cls()
            qtbot.addWidget(w)
            w.setPalette(pal)
            w.apply_palette()
            assert w.backgroundBrush().color().name() == base
            axis = w.plot_item.getAxis("bottom")
            assert axis.textPen().color().name() == text
