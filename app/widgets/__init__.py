"""The app's widgets; each can be embedded on its own (no QApplication is created at import)."""
from .alerts import AlertsPanel
from .graph_panel import GraphPanel
from .graphs import LoopLagGraph, MemoryGraph, OutstandingOpsGraph, ReceivedDataGraph
from .monitor_widget import LoopMonitorWidget
from .ops_table import OutstandingOpsModel, OutstandingOpsTable
from .timeline import OperationTimeline

__all__ = ["LoopMonitorWidget", "GraphPanel", "OutstandingOpsGraph", "MemoryGraph",
           "ReceivedDataGraph", "LoopLagGraph", "OutstandingOpsTable", "OutstandingOpsModel",
           "OperationTimeline", "AlertsPanel"]
