"""``GraphPanel``: the four graphs on one shared, scrolling time axis, with window/pause/zoom.

The x axes are linked, so zooming or panning one graph moves all four.  While *live*, every frame
puts the right edge at the target's "now" (``SessionModel.now_x()``, which keeps moving between
samples, so the scroll is smooth at 30 Hz even though samples arrive at 20 Hz) and the left edge
one window back.  A mouse zoom or pan while live would be overwritten by the next frame, so any
manual range change *pauses* the panel instead: the user keeps the view they made, data keeps
being ingested, and "Live" snaps back.  The "all" window asks the model for the whole session
(coarse history + recent rows).

Only the bottom graph shows time labels; the others keep the grid, so the four line up.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QSplitter, QVBoxLayout, QWidget,
)

from app.widgets.graphs import (
    LoopLagGraph, decimate_peaks, MemoryGraph, OutstandingOpsGraph, ReceivedDataGraph, TimeSeriesGraph,
)

MIN_SPAN = 2.0    # seconds: narrowest live view while a session is younger than its window
WINDOWS: tuple[tuple[str, Optional[float]], ...] = (
    ("10 s", 10.0), ("1 min", 60.0), ("10 min", 600.0), ("all", None),
)


class GraphPanel(QWidget):
    """Toolbar (window, live/pause, reset zoom) over the four linked graphs."""

    pausedChanged = Signal(bool)

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.outstanding = OutstandingOpsGraph()
        self.memory = MemoryGraph()
        self.received = ReceivedDataGraph()
        self.lag = LoopLagGraph()
        self.graphs: list[TimeSeriesGraph] = [self.outstanding, self.memory, self.received,
                                               self.lag]
        self.window_seconds: Optional[float] = 60.0
        self.paused = False
        self._applying_range = False
        self._drawn_key: tuple = ()

        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        bar.addWidget(QLabel("Window:"))
        self.window_box = QComboBox()
        for label, seconds in WINDOWS:
            self.window_box.addItem(label, seconds)
        self.window_box.setCurrentIndex(1)
        self.window_box.currentIndexChanged.connect(self._window_changed)
        bar.addWidget(self.window_box)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip("Freeze the view (data keeps arriving); zoom and pan freely")
        self.pause_button.toggled.connect(self.set_paused)
        bar.addWidget(self.pause_button)
        self.reset_button = QPushButton("Reset zoom")
        self.reset_button.clicked.connect(self.go_live)
        bar.addWidget(self.reset_button)
        bar.addStretch(1)
        self.hint = QLabel("")
        bar.addWidget(self.hint)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        for i, graph in enumerate(self.graphs):
            graph.show_time_labels(i == len(self.graphs) - 1)
            if i:
                graph.setXLink(self.graphs[0])
            graph.plot_item.vb.sigRangeChangedManually.connect(self._manual_range)
            graph.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
            splitter.addWidget(graph)
        splitter.setSizes([300, 220, 220, 180])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(bar)
        layout.addWidget(splitter, 1)

    # ---------------------------------------------------------------- controls
    def _window_changed(self, index: int) -> None:
        self.window_seconds = self.window_box.itemData(index)
        self.go_live()

    def set_window(self, seconds: Optional[float]) -> None:
        for i, (_label, s) in enumerate(WINDOWS):
            if s == seconds:
                self.window_box.setCurrentIndex(i)
                return
        raise ValueError(f"window must be one of {[s for _, s in WINDOWS]}")

    def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        self.pause_button.setChecked(paused)
        self.pause_button.setText("Live" if paused else "Pause")
        self.hint.setText("paused: scroll to zoom, drag to pan" if paused else "")
        self.pausedChanged.emit(paused)

    def go_live(self) -> None:
        self.set_paused(False)

    def _manual_range(self, *args) -> None:
        if not self._applying_range:
            self.set_paused(True)

    # ---------------------------------------------------------------- frame
    def refresh(self, model) -> None:
        """Redraw from the model (called by the owner's frame timer, never per message).

        Live: the rows of the window (+2 s) are decimated and handed to the graphs only when a
        new sample arrived; the frames in between just move the x range (cheap: no curve is
        rebuilt).  Paused: the rows of the visible range, so zooming in shows full resolution.
        """
        window = self.window_seconds
        if self.paused:
            lo, hi = self.x_range()
            rows = model.series(None)
            if len(rows):
                margin = (hi - lo) * 0.05
                i0 = max(0, int(np.searchsorted(rows[:, 0], lo - margin)) - 1)
                i1 = int(np.searchsorted(rows[:, 0], hi + margin, side="right")) + 1
                rows = rows[i0:i1]
            self._draw(rows, model, key=("paused", lo, hi, model.version))
            for graph in self.graphs:
                graph.fit_y(lo, hi)
            return
        rows = model.series(None if window is None else window + 2.0)
        self._draw(rows, model, key=(window, len(rows), float(rows[-1, 0]) if len(rows) else 0.0,
                                     float(rows[0, 0]) if len(rows) else 0.0))
        if not len(rows):
            return
        right = max(model.now_x(), float(rows[-1, 0]))
        first = float(rows[0, 0])
        if window is None or right - window < first:
            # a session younger than the window: fill the width instead of leaving it empty
            left = first
            right = max(right, first + MIN_SPAN)
        else:
            left = right - window
        self._applying_range = True
        try:
            self.graphs[0].setXRange(left, right, padding=0)
        finally:
            self._applying_range = False
        for graph in self.graphs:
            graph.fit_y(left, right)

    def _draw(self, rows: np.ndarray, model, key: tuple) -> None:
        for graph in self.graphs:
            graph.refresh_alerts(model)
        if key == self._drawn_key:
            return
        self._drawn_key = key
        width = max(200, self.graphs[0].width())
        decimated = decimate_peaks(rows, 2 * width)
        # pyqtgraph keeps the arrays it is given; a view into the model's ring would change
        # under it at the next append (the ring overwrites its oldest row): hand it a copy
        rows = decimated if decimated is not rows else rows.copy()
        for graph in self.graphs:
            graph.refresh(rows, model)

    def x_range(self) -> tuple[float, float]:
        (lo, hi), _ = self.graphs[0].plot_item.vb.viewRange()
        return lo, hi
