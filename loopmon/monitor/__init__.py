"""The in-process recorder every instrumented loop carries as ``loop.monitor``."""
from .events import KIND_NAMES, OUTCOME_NAMES, kind_name, outcome_name
from .recorder import IMPLEMENTATION, BufferRecord, Monitor, OpRecord
from .snapshot import BufferInfo, OpInfo, Snapshot

__all__ = ["IMPLEMENTATION", "Monitor", "OpRecord", "BufferRecord", "Snapshot", "OpInfo", "BufferInfo",
           "KIND_NAMES", "OUTCOME_NAMES", "kind_name", "outcome_name"]
