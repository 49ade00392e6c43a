"""``ProcessPicker``: choose what to watch — a discovered process, an address, or the demo.

Lists what ``loopmon ps`` lists (``loopmon.telemetry.discovery.list_processes()``: live
instrumented processes of this user, stale entries pruned), refreshed on demand and every few
seconds while nothing is attached.  The picker only *asks*: it emits ``attachRequested(target)``,
``detachRequested()`` and ``demoRequested(name)`` and the window decides.  Discovery errors (an
unreadable runtime dir) show as an empty list with a tooltip, never an exception.
"""
from __future__ import annotations

import time
from typing import Optional

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox, QHBoxLayout, QLabel, QLineEdit, QMenu, QPushButton, QToolButton, QWidget,
)

from app.demo import DEMOS


class ProcessPicker(QWidget):
    attachRequested = Signal(str)
    detachRequested = Signal()
    demoRequested = Signal(str)

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.process_box = QComboBox()
        self.process_box.setMinimumContentsLength(34)
        self.process_box.setToolTip("Instrumented processes on this machine (loopmon ps)")
        self.refresh_button = QPushButton("Refresh")
        self.attach_button = QPushButton("Attach")
        self.detach_button = QPushButton("Detach")
        self.address_edit = QLineEdit()
        self.address_edit.setPlaceholderText("pid, unix:/path or host:port")
        self.address_edit.setMinimumWidth(170)
        self.address_button = QPushButton("Attach address")
        self.demo_button = QToolButton()
        self.demo_button.setText("Start demo")
        self.demo_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        menu = QMenu(self.demo_button)
        for name in DEMOS:
            menu.addAction(f"demo: {name}", lambda n=name: self.demoRequested.emit(n))
        self.demo_button.setMenu(menu)
        self.demo_button.clicked.connect(lambda: self.demoRequested.emit("plain"))

        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(QLabel("Process:"))
        layout.addWidget(self.process_box, 1)
        for w in (self.refresh_button, self.attach_button, self.detach_button):
            layout.addWidget(w)
        layout.addSpacing(12)
        layout.addWidget(self.address_edit)
        layout.addWidget(self.address_button)
        layout.addSpacing(12)
        layout.addWidget(self.demo_button)

        self.refresh_button.clicked.connect(self.refresh)
        self.attach_button.clicked.connect(self._attach_selected)
        self.detach_button.clicked.connect(self.detachRequested)
        self.address_button.clicked.connect(self._attach_address)
        self.address_edit.returnPressed.connect(self._attach_address)
        self._timer = QTimer(self)
        self._timer.setInterval(3000)
        self._timer.timeout.connect(self.refresh)
        self.set_attached(False)

    def refresh(self) -> None:
        try:
            from loopmon.telemetry.discovery import list_processes
            entries = list_processes()
            self.process_box.setToolTip("Instrumented processes on this machine (loopmon ps)")
        except Exception as exc:     # discovery unavailable: say so, keep working
            entries = []
            self.process_box.setToolTip(f"discovery failed: {exc}")
        current = self.process_box.currentData()
        self.process_box.clear()
        for e in entries:
            command = e.command if len(e.command) < 60 else e.command[:57] + "…"
            self.process_box.addItem(
                f"{e.pid}  {command}  [{e.backend}, started "
                f"{time.strftime('%H:%M:%S', time.localtime(e.started_wall))}]", str(e.pid))
        if not entries:
            self.process_box.addItem("(no instrumented processes found)", None)
        i = self.process_box.findData(current)
        if i >= 0:
            self.process_box.setCurrentIndex(i)
        self.attach_button.setEnabled(bool(entries))

    def set_attached(self, attached: bool) -> None:
        self.detach_button.setEnabled(attached)
        if attached:
            self._timer.stop()
        else:
            self._timer.start()

    def _attach_selected(self) -> None:
        pid = self.process_box.currentData()
        if pid:
            self.attachRequested.emit(pid)

    def _attach_address(self) -> None:
        text = self.address_edit.text().strip()
        if text:
            self.attachRequested.emit(text)
