"""``LoopMonitorWidget``: the whole monitor — graphs, ops table, timeline, alerts — in one widget.

This is the embeddable unit (``examples/embed_widget.py`` puts it in someone else's
``QMainWindow``); ``app.window.MainWindow`` is just this widget plus menus, a process picker and
a status bar.  It owns one ``SessionModel`` and at most one feed:

* ``attach(target)`` — a pid, ``unix:/path`` or ``host:port``, through ``loopmon.client`` on the
  qasync loop;
* ``attach_monitor(monitor)`` — a ``Monitor`` of a loop in this same process;
* ``replay(path)`` — a recording; ``detach()`` — stop listening, keep what was seen.

Attaching to the *same* target again keeps the history (the model merges the backlog); a
different target starts a fresh model.  Drawing is driven by two ``QTimer``s, never by
messages: graphs at ~30 Hz (``frame_ms``) and the table, timeline and alerts at ~10 Hz
(``table_ms``), and only when something changed or the live clock moved.  Importing this
module creates no ``QApplication``, timer or loop; those appear when the widget is built.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from PySide6.QtCore import QTimer, Qt, Signal
from PySide6.QtWidgets import QSplitter, QVBoxLayout, QWidget

from app.feeds import (
    FAILED, LIVE, Feed, MonitorFeed, RemoteFeed, ReplayFeed, SyntheticFeed,
)
from app.model.session import SessionModel
from app.widgets.alerts import AlertsPanel
from app.widgets.graph_panel import GraphPanel
from app.widgets.ops_table import OutstandingOpsTable
from app.widgets.timeline import OperationTimeline


class LoopMonitorWidget(QWidget):
    """Live view of one monitored event loop (see the module docstring)."""

    #: (state, detail) from the current feed: connecting / live / ended / failed
    feedStateChanged = Signal(str, str)
    #: emitted after each frame; the status bar listens
    frameDrawn = Signal()

    def __init__(self, parent: Optional[QWidget] = None, *, frame_ms: int = 30,
                 table_ms: int = 100) -> None:
        super().__init__(parent)
        self.model = SessionModel()
        self.feed: Optional[Feed] = None
        self.graphs = GraphPanel()
        self.table = OutstandingOpsTable()
        self.timeline = OperationTimeline()
        self.alerts = AlertsPanel()
        self.frames = 0

        right = QSplitter(Qt.Orientation.Vertical)
        right.setChildrenCollapsible(False)
        right.addWidget(self.table)
        right.addWidget(self.timeline)
        right.addWidget(self.alerts)
        right.setSizes([330, 260, 170])
        main = QSplitter(Qt.Orientation.Horizontal)
        main.setChildrenCollapsible(False)
        main.addWidget(self.graphs)
        main.addWidget(right)
        main.setStretchFactor(0, 3)
        main.setStretchFactor(1, 2)
        main.setSizes([820, 560])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(main)

        self._frame_timer = QTimer(self)
        self._frame_timer.setInterval(frame_ms)
        self._frame_timer.timeout.connect(self.redraw_graphs)
        self._table_timer = QTimer(self)
        self._table_timer.setInterval(table_ms)
        self._table_timer.timeout.connect(self.redraw_details)
        self._drawn_version = -1
        self._frame_timer.start()
        self._table_timer.start()

    # ---------------------------------------------------------------- sources
    def attach(self, target: Union[int, str], *, token: Optional[str] = None,
               timeout: float = 5.0, retry_for: float = 0.0) -> RemoteFeed:
        """Attach to a target in another process; returns the feed (watch ``stateChanged``)."""
        feed = RemoteFeed(self.model, target, token=token, timeout=timeout,
                          retry_for=retry_for, parent=self)
        self._use(feed)
        return feed

    def attach_monitor(self, monitor: Any) -> MonitorFeed:
        """Attach to an instrumented loop's ``Monitor`` in this process."""
        feed = MonitorFeed(self.model, monitor, parent=self)
        self._use(feed)
        return feed

    def replay(self, path: str) -> ReplayFeed:
        """Open a recording (raises ``ValueError``/``OSError`` with a one-line message)."""
        feed = ReplayFeed(SessionModel(), path, parent=self)
        feed.load()
        self.detach()
        self.model = feed.model
        self._use(feed)
        return feed

    def attach_synthetic(self, ops_per_second: float = 100_000) -> SyntheticFeed:
        """SYNTHETIC data for benchmarks and drawing tests; never a stand-in for a real target."""
        feed = SyntheticFeed(self.model, ops_per_second=ops_per_second, parent=self)
        self._use(feed)
        return feed

    def detach(self) -> None:
        """Stop listening; the history stays on screen."""
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.stop()
            feed.stateChanged.disconnect(self.feedStateChanged)

    def _use(self, feed: Feed) -> None:
        if self.feed is not None:
            self.detach()
        feed.model = self.model
        self.feed = feed
        feed.stateChanged.connect(self.feedStateChanged)
        feed.start()
        self._drawn_version = -1

    @property
    def live(self) -> bool:
        return self.feed is not None and self.feed.state == LIVE

    @property
    def failed(self) -> bool:
        return self.feed is not None and self.feed.state == FAILED

    # ---------------------------------------------------------------- drawing
    def redraw_graphs(self) -> None:
        """One graph frame (the 30 Hz timer calls this; tests and the bench may too)."""
        if self.model.version == self._drawn_version and not self.model.connected:
            return
        self._drawn_version = self.model.version
        self.graphs.refresh(self.model)
        self.frames += 1
        self.frameDrawn.emit()

    def redraw_details(self) -> None:
        """Table, timeline and alerts (~10 Hz)."""
        self.table.refresh(self.model)
        right = None if not self.graphs.paused else self.graphs.x_range()[1]
        self.timeline.refresh(self.model, right)
        self.alerts.refresh(self.model)

    def redraw_all(self) -> None:
        self._drawn_version = -1
        self.redraw_graphs()
        self.redraw_details()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.detach()
        super().closeEvent(event)
