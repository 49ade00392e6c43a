"""``AlertsPanel``: the detectors' alerts, newest first, with their evidence.

Alerts are rare and append-only, so the panel is a plain ``QTreeWidget`` that only inserts the
alerts it has not shown yet (tracked by ``SessionModel.alerts_version`` and a count), newest at
the top; each alert's evidence (op ids, counts, bytes) is a child row, so the one-line message
stays readable and the detail is a click away.  Severity is shown by an icon-like coloured dot
and the text, never by colour alone.
"""
from __future__ import annotations

import json
from typing import Optional

from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QLabel, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from app.units import format_clock
from app.widgets.theme import SEVERITY_COLOURS


class AlertsPanel(QWidget):
    """List of ``Alert`` messages (see the module docstring)."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["time", "severity", "kind", "message"])
        self.tree.setRootIsDecorated(True)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        for col, width in ((0, 64), (1, 78), (2, 96)):
            self.tree.setColumnWidth(col, width)
        self.title = QLabel("<b>Alerts</b>")
        self.empty = QLabel("No alerts: the detectors have nothing to report.")
        self.empty.setEnabled(False)     # palette's disabled text: subdued on either theme
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        layout.addWidget(self.title)
        layout.addWidget(self.empty)
        layout.addWidget(self.tree, 1)
        self._shown = 0
        self._version = -1

    def refresh(self, session) -> None:
        if session.alerts_version == self._version:
            return
        self._version = session.alerts_version
        alerts = list(session.alerts)
        if len(alerts) < self._shown:        # the model was reset (a new target)
            self.tree.clear()
            self._shown = 0
        new = alerts[self._shown:] if self._shown <= len(alerts) else alerts
        for alert in new:
            self.tree.insertTopLevelItem(0, self._item(alert, session.t0))
        self._shown = len(alerts)
        self.empty.setVisible(not alerts)
        self.title.setText(f"<b>Alerts</b> ({len(alerts)})" if alerts else "<b>Alerts</b>")

    def _item(self, alert, t0: float) -> QTreeWidgetItem:
        item = QTreeWidgetItem([format_clock(round(alert.t - t0, 1)), "● " + alert.severity,
                                alert.kind, alert.message])
        item.setForeground(1, QBrush(QColor(SEVERITY_COLOURS.get(alert.severity, "#F28E2B"))))
        item.setToolTip(3, alert.message)
        for key, value in (alert.evidence or {}).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            child = QTreeWidgetItem(["", "", str(key), text[:500]])
            child.setToolTip(3, text[:4000])
            item.addChild(child)
        return item
