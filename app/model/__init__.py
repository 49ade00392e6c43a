"""The app's data model: plain Python + numpy, no Qt (see ``session`` for the overview)."""
from .ops import OpLifecycles, OpRow, OutstandingOps, Span, SPAN_NAMES
from .series import CoarseHistory, SeriesRing
from .session import COL, COLUMNS, KIND_COLUMNS, SessionModel

__all__ = ["SessionModel", "SeriesRing", "CoarseHistory", "OutstandingOps", "OpLifecycles",
           "OpRow", "Span", "SPAN_NAMES", "COL", "COLUMNS", "KIND_COLUMNS"]
