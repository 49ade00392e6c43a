"""``MainWindow``: the desktop app around a ``LoopMonitorWidget``.

It adds what an application needs and a widget must not impose: the process picker (attach /
detach / attach by address / start demo), File menu actions (open a recording, export a PNG of
the window and a CSV of the series), the replay bar, a message bar for the things a user must
not miss (a failed attach, the target exiting) and a status bar (target pid and command, backend,
connection state, events/s, dropped events).

Nothing here is modal while running: errors go to the message bar and stderr, not to a dialog
that would block ``--screenshot`` in an offscreen run.  The window owns the demo child (if
any) and kills it when it closes.  A target that exits leaves its history on screen; attaching
again (same pid or another) is always possible.
"""
from __future__ import annotations

import csv
import sys
from typing import Optional, Union

from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog, QLabel, QMainWindow, QSizePolicy, QToolBar, QVBoxLayout, QWidget,
)

from app.assets import icon
from app.demo import DemoProcess
from app.feeds import CONNECTING, ENDED, FAILED, LIVE
from app.units import format_count
from app.widgets.monitor_widget import LoopMonitorWidget
from app.widgets.process_picker import ProcessPicker
from app.widgets.replay_bar import ReplayBar


class MainWindow(QMainWindow):
    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("loopmon — asyncio loop monitor")
        self.setWindowIcon(icon("loopmon"))
        self.monitor = LoopMonitorWidget()
        self.demo: Optional[DemoProcess] = None
        self.last_error = ""

        self.picker = ProcessPicker()
        bar = QToolBar("Target")
        bar.setMovable(False)
        bar.addWidget(self.picker)
        self.addToolBar(bar)

        self.message_bar = QLabel("")
        self.message_bar.setObjectName("messageBar")
        self.message_bar.setWordWrap(True)
        self.message_bar.setVisible(False)
        self.replay_bar = ReplayBar()
        self.replay_bar.setVisible(False)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.message_bar)
        layout.addWidget(self.monitor, 1)
        layout.addWidget(self.replay_bar)
        self.setCentralWidget(central)

        self._build_menu()
        self._build_status_bar()
        self.picker.attachRequested.connect(self.attach)
        self.picker.detachRequested.connect(self.detach)
        self.picker.demoRequested.connect(self.start_demo)
        self.monitor.feedStateChanged.connect(self._feed_state)
        self._status_timer = QTimer(self)
        self._status_timer.setInterval(500)
        self._status_timer.timeout.connect(self.update_status)
        self._status_timer.start()
        self.picker.refresh()
        self.update_status()
        self.resize(1400, 900)

    # ---------------------------------------------------------------- chrome
    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        for text, slot, key in (("&Open recording…", self.open_recording_dialog, QKeySequence.Open),
                                ("Export &PNG…", self.export_png_dialog, None),
                                ("Export &CSV…", self.export_csv_dialog, None),
                                (None, None, None),
                                ("&Quit", self.close, QKeySequence.Quit)):
            if text is None:
                file_menu.addSeparator()
                continue
            action = QAction(text, self)
            if key is not None:
                action.setShortcut(key)
            action.triggered.connect(slot)
            file_menu.addAction(action)
        view_menu = self.menuBar().addMenu("&View")
        pause = QAction("&Pause graphs", self, checkable=True)
        pause.setShortcut("Space")
        pause.toggled.connect(self.monitor.graphs.set_paused)
        self.monitor.graphs.pausedChanged.connect(pause.setChecked)
        view_menu.addAction(pause)

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.status_target = QLabel("no target")
        self.status_target.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status_backend = QLabel("")
        self.status_state = QLabel("disconnected")
        self.status_rate = QLabel("")
        self.status_dropped = QLabel("")
        sb.addWidget(self.status_target, 1)
        for w in (self.status_backend, self.status_state, self.status_rate, self.status_dropped):
            sb.addPermanentWidget(w)

    def show_message(self, text: str, error: bool = False) -> None:
        self.message_bar.setProperty("error", error)
        self.message_bar.style().unpolish(self.message_bar)
        self.message_bar.style().polish(self.message_bar)
        self.message_bar.setText(text)
        self.message_bar.setVisible(bool(text))

    # ---------------------------------------------------------------- sources
    def attach(self, target: Union[int, str], retry_for: float = 0.0) -> None:
        self.replay_bar.set_feed(None)
        self.show_message("")
        self.monitor.attach(target, retry_for=retry_for)
        self.picker.set_attached(True)

    def detach(self) -> None:
        self.monitor.detach()
        self.picker.set_attached(False)
        self.update_status()

    def start_demo(self, name: str = "plain") -> None:
        self.stop_demo()
        self.demo = DemoProcess(name)
        try:
            pid = self.demo.start()
        except (OSError, ValueError) as exc:
            self._fail(f"cannot start the demo: {exc}")
            return
        self.attach(pid, retry_for=15.0)
        self.show_message(f"Started demo '{name}' (pid {pid}): {' '.join(self.demo.command[1:])}")
        QTimer.singleShot(2000, self._check_demo)

    def _check_demo(self) -> None:
        if self.demo is not None and self.demo.exited() is not None and not self.monitor.live:
            why = self.demo.error_tail() or f"exit code {self.demo.exited()}"
            self._fail(f"the demo exited at once: {why}")

    def stop_demo(self) -> None:
        if self.demo is not None:
            self.demo.stop()
            self.demo = None

    def open_recording(self, path: str) -> bool:
        try:
            feed = self.monitor.replay(path)
        except (OSError, ValueError, RuntimeError) as exc:
            self._fail(f"cannot open recording {path}: {exc}")
            return False
        except Exception as exc:   # a codec error type we do not know: still one line
            self._fail(f"cannot open recording {path}: {type(exc).__name__}: {exc}")
            return False
        self.picker.set_attached(False)
        self.replay_bar.set_feed(feed)
        note = f" — {feed.warning}" if feed.warning else ""
        self.show_message(f"Replaying {path} ({feed.duration:.1f} s): drag the slider or press "
                          f"Play{note}", error=bool(note))
        self.update_status()
        return True

    def _fail(self, message: str) -> None:
        self.last_error = message
        print(f"loopmon-gui: {message}", file=sys.stderr)
        self.show_message(message, error=True)
        self.update_status()

    def _feed_state(self, state: str, detail: str) -> None:
        if state == FAILED:
            self.picker.set_attached(False)
            self._fail(detail)
        elif state == ENDED and detail not in ("detached", "") and not detail.startswith("replaying"):
            self.picker.set_attached(False)
            self.show_message(f"The target is gone: {detail}. Its history stays on screen; "
                              f"attach again to continue.", error=True)
        elif state == LIVE:
            if self.message_bar.property("error"):
                self.show_message("")
            self.picker.refresh()
        self.update_status()

    # ---------------------------------------------------------------- status
    def update_status(self) -> None:
        model = self.monitor.model
        feed = self.monitor.feed
        hello = model.hello
        if hello is not None:
            self.status_target.setText(f"pid {hello.pid} · {' '.join(hello.argv)}")
            self.status_backend.setText(f"backend: {hello.backend}")
        else:
            self.status_target.setText(feed.description if feed else "no target")
            self.status_backend.setText("")
        state = feed.state if feed else "disconnected"
        label = {LIVE: "● connected", CONNECTING: "… connecting", ENDED: "○ disconnected",
                 FAILED: "✕ failed"}.get(state, "○ disconnected")
        if feed is not None and feed.description.startswith("recording"):
            label = "▶ replay"
        self.status_state.setText(label)
        self.status_rate.setText(f"{format_count(model.ops_per_second())} ops/s · "
                                 f"{format_count(model.events_per_second())} events/s")
        dropped = f"dropped: {format_count(model.events_dropped())}"
        omitted, budget = model.events_omitted()
        if omitted:
            # honest about the timeline: it shows a sample of op lifecycles past the budget
            dropped += f" · sampled: {format_count(omitted)} omitted ({format_count(budget)}/s budget)"
        self.status_dropped.setText(dropped)

    # ---------------------------------------------------------------- export
    def export_png(self, path: str) -> bool:
        self.monitor.redraw_all()
        ok = self.grab().save(path)
        if not ok:
            self._fail(f"could not write {path}")
        return ok

    def export_csv(self, path: str) -> int:
        header, rows = self.monitor.model.to_csv_rows()
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows.tolist())
        return len(rows)

    def open_recording_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open recording", "",
                                              "loopmon recordings (*.lmrec *.rec *);;All files (*)")
        if path:
            self.open_recording(path)

    def export_png_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", "loopmon.png", "PNG (*.png)")
        if path:
            self.export_png(path)

    def export_csv_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export CSV", "loopmon.csv", "CSV (*.csv)")
        if path:
            try:
                n = self.export_csv(path)
                self.show_message(f"Wrote {n} rows to {path}")
            except OSError as exc:
                self._fail(f"could not write {path}: {exc}")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.monitor.detach()
        self.stop_demo()
        super().closeEvent(event)
