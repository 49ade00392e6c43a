"""loopmon's Qt desktop app and its embeddable widgets.

``from app import LoopMonitorWidget`` (or any single graph / table widget) imports PySide6 and
pyqtgraph but creates no ``QApplication``, window, timer or event loop: embedding code stays in
charge of its application.  The desktop app itself is ``app.main`` (``python -m app``,
``loopmon-gui``).

``app.qtcompat`` is imported first: it works around a PySide6 bug that otherwise crashes any Qt
window within seconds on Python 3.11 (see its docstring).
"""
from app import qtcompat  # noqa: F401  (must run before any Qt event is processed)
from app.widgets import (
    AlertsPanel, GraphPanel, LoopLagGraph, LoopMonitorWidget, MemoryGraph, OperationTimeline,
    OutstandingOpsGraph, OutstandingOpsModel, OutstandingOpsTable, ReceivedDataGraph,
)

__all__ = ["LoopMonitorWidget", "GraphPanel", "OutstandingOpsGraph", "MemoryGraph",
           "ReceivedDataGraph", "LoopLagGraph", "OutstandingOpsTable", "OutstandingOpsModel",
           "OperationTimeline", "AlertsPanel"]
