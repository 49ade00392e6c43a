"""``OperationTimeline``: recent op lifecycles as horizontal bars coloured by outcome.

Each op that went pending is a bar from its submission to its end (or to "now" while still in
flight), on the first free *lane* — a greedy interval packing over the spans in view, so
overlapping ops stack and sequential ones share a row, like a Gantt chart.  Colour says how it
ended: pending, completed, cancelled, failed, or *lost data* (a completion whose bytes were
discarded: the bpo-33694 signature).  A cancel request is a small tick on the bar, because the
interesting case is exactly a bar that keeps going after its tick.

Drawn with one ``SpanBars`` item per outcome rather than one item per op.  pyqtgraph's
``BarGraphItem`` was the obvious choice and the bench's biggest cost: it records every bar into
a ``QPicture`` and replays it on each paint (4 of 8 CPU seconds at 100 k ops/s).  ``SpanBars``
builds its ``QRectF`` list once per data change (~10 Hz) and paints with one ``drawRects`` call.  Spans beyond ``MAX_LANES`` are not
drawn and the title says how many were left out.
"""
from __future__ import annotations

import heapq
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QSizePolicy

from app.model.ops import SPAN_NAMES, SPAN_PENDING, Span
from app.widgets.axes import TimeAxis
from app.widgets.theme import OUTCOME_COLOURS, blend, grid_alpha, plot_background, plot_foreground

MAX_LANES = 64
BAR_HEIGHT = 0.72


def pack_lanes(spans: list[Span], now: float, max_lanes: int = MAX_LANES,
               gap: float = 0.0) -> tuple[list[tuple[Span, int, float]], int]:
    """Assign each span (by start time) a lane that is free at its start.

    A heap of ``(busy_until, lane)`` gives the lane that frees first in O(log lanes), so
    thousands of spans pack in a few milliseconds (a first-free linear scan cost 35 ms at
    8 000 spans once the lanes filled up).  Returns ``[(span, lane, end)]`` where ``end`` is
    ``now`` for pending spans, and the number of spans that did not fit in ``max_lanes``.
    """
    free: list[tuple[float, int]] = []       # (busy_until, lane)
    placed: list[tuple[Span, int, float]] = []
    hidden = 0
    lanes = 0
    for span in sorted(spans, key=lambda s: s.start):
        end = now if span.outcome == SPAN_PENDING else span.end
        if free and free[0][0] + gap <= span.start:
            _, lane = heapq.heapreplace(free, (end, free[0][1]))
        elif lanes < max_lanes:
            lane = lanes
            lanes += 1
            heapq.heappush(free, (end, lane))
        else:
            hidden += 1
            continue
        placed.append((span, lane, end))
    return placed, hidden


class SpanBars(pg.GraphicsObject):
    """Many same-coloured rectangles, painted with one ``drawRects`` (see the module docstring)."""

    def __init__(self, colour: QColor) -> None:
        super().__init__()
        self._brush = pg.mkBrush(colour)
        self._pen = pg.mkPen(colour.darker(130), width=0.6)
        self._pen.setCosmetic(True)
        self._rects: list[QRectF] = []
        self._bounds = QRectF()

    def set_spans(self, x0: np.ndarray, x1: np.ndarray, y: np.ndarray, height: float) -> None:
        self.prepareGeometryChange()
        half = height / 2.0
        self._rects = [QRectF(a, c - half, b - a, height)
                       for a, b, c in zip(x0.tolist(), x1.tolist(), y.tolist())]
        if self._rects:
            self._bounds = QRectF(float(x0.min()), float(y.min()) - half,
                                  float(x1.max() - x0.min()), float(y.max() - y.min()) + height)
        else:
            self._bounds = QRectF()
        self.update()

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt API
        return self._bounds

    def paint(self, painter: QPainter, *args) -> None:
        if self._rects:
            painter.setPen(self._pen)
            painter.setBrush(self._brush)
            painter.drawRects(self._rects)


class OperationTimeline(pg.PlotWidget):
    """The last ``window`` seconds of op lifecycles (see the module docstring)."""

    def __init__(self, parent=None, window: float = 10.0) -> None:
        super().__init__(parent, axisItems={"bottom": TimeAxis("bottom")})
        self.window = window
        self.plot_item = self.getPlotItem()
        self.plot_item.hideButtons()
        self.plot_item.setMenuEnabled(False)
        self.plot_item.vb.setMouseEnabled(x=False, y=False)
        self.plot_item.hideAxis("left")          # lanes have no meaning worth a scale
        self.plot_item.vb.invertY(True)
        self.setMinimumHeight(120)
        self._bars: dict[int, SpanBars] = {}
        self._cancel_ticks = pg.ScatterPlotItem(symbol="t1", size=9, pxMode=True)
        self.plot_item.addItem(self._cancel_ticks)
        for outcome in range(len(SPAN_NAMES)):
            bars = SpanBars(QColor(OUTCOME_COLOURS[outcome]))
            self._bars[outcome] = bars
            self.plot_item.addItem(bars)
        # the legend lives in the title (coloured squares), so it never covers a bar
        self._legend_html = " ".join(
            f"<span style='color:{OUTCOME_COLOURS[i]}'>&#9632;</span>&nbsp;{name}"
            for i, name in enumerate(SPAN_NAMES)) + " &nbsp;&#9650;&nbsp;cancel requested"
        self.hidden = 0
        self.shown = 0
        self.apply_palette()

    def apply_palette(self) -> None:
        bg, fg = plot_background(self), plot_foreground(self)
        self.setBackground(bg)
        for name in ("bottom",):
            axis = self.plot_item.getAxis(name)
            axis.setPen(pg.mkPen(blend(fg, bg, 0.55)))
            axis.setTextPen(pg.mkPen(fg))
            axis.setStyle(maxTickLevel=0)      # major grid lines only (see graphs.py)
        self.plot_item.showGrid(x=True, y=False, alpha=grid_alpha(self))
        self._cancel_ticks.setPen(pg.mkPen(fg, width=1.2))
        self._cancel_ticks.setBrush(fg)
        self._fg = fg
        self.plot_item.titleLabel.setSizePolicy(QSizePolicy.Policy.Ignored,
                                                QSizePolicy.Policy.Preferred)
        self._set_title()

    def _set_title(self) -> None:
        extra = f" — {self.hidden} more not drawn" if self.hidden else ""
        self.plot_item.setTitle(f"<b>Operation timeline</b> — ops that went pending, last "
                                f"{self.window:g} s{extra}<br>{self._legend_html}",
                                color=self._fg.name(), size="9pt")

    def refresh(self, session, right: Optional[float] = None) -> None:
        """Redraw the spans ending in the ``window`` seconds before ``right`` (target-relative)."""
        t0 = session.t0
        now = session.target_now()
        right_abs = now if right is None else right + t0
        left_abs = right_abs - self.window
        spans = [s for s in session.lifecycles.spans_since(left_abs) if s.start <= right_abs]
        placed, hidden = pack_lanes(spans, now)
        n = len(placed)
        starts = np.fromiter((p[0].start for p in placed), float, n)
        ends = np.fromiter((p[2] for p in placed), float, n)
        lane_of = np.fromiter((p[1] for p in placed), float, n)
        outcomes = np.fromiter((p[0].outcome for p in placed), np.int64, n)
        x0 = np.maximum(starts, left_abs) - t0
        x1 = np.maximum(ends - t0, x0 + self.window / 600.0)   # inline failures: a sliver
        for outcome, bars in self._bars.items():
            mask = outcomes == outcome
            bars.set_spans(x0[mask], x1[mask], lane_of[mask], BAR_HEIGHT)
        ticks = [(p[0].cancel_t - t0, p[1] - 0.45) for p in placed if p[0].cancel_t]
        self._cancel_ticks.setData([t[0] for t in ticks], [t[1] for t in ticks])
        lanes = int(lane_of.max()) + 1 if n else 1
        x_left = max(left_abs - t0, 0.0)     # a young session starts at the left edge
        self.plot_item.setXRange(x_left, max(right_abs - t0, x_left + self.window), padding=0)
        self.plot_item.setYRange(-0.6, max(lanes, 6) - 0.3, padding=0)
        self.shown = len(placed)
        if hidden != self.hidden:          # titles are HTML layouts: only when the text changes
            self.hidden = hidden
            self._set_title()
