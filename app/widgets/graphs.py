"""The live graphs: outstanding ops by kind, memory, received data, loop lag.

Each graph is a ``pg.PlotWidget`` subclass that knows which columns of the ``SessionModel``
series it draws (``refresh(rows, model)``), so any one of them can be embedded on its own;
``GraphPanel`` (``app.widgets.graph_panel``) stacks them on one shared time axis.

Drawing rules that keep 30 frames/s cheap: curves are created once (per-kind curves lazily, the
first time a kind is outstanding) and only get ``setData`` per frame; pyqtgraph clips to the
view and peak-downsamples, so a 10-minute window of 12 000 rows costs about what 10 s does.  Two
quantities with different scales on one graph (RSS vs buffer bytes, cumulative bytes vs rate)
get a second ``ViewBox`` on the right axis rather than one flattening the other.

The stacked area is drawn as filled curves of the running sum, bottom kind on top in z-order,
with opaque fills (a translucent stack would blend each layer with all those above it).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QGraphicsItem, QSizePolicy

from app.model.session import COL, KIND_COLUMNS
from app.widgets.axes import ByteAxis, CountAxis, TimeAxis
from app.widgets.theme import (
    KIND_COLOURS, SERIES_COLOURS, SEVERITY_COLOURS, blend, grid_alpha, plot_background,
    plot_foreground,
)

LEFT_AXIS_WIDTH = 74
RIGHT_AXIS_WIDTH = 78
MAX_ALERT_MARKERS = 60


def nice_step(x: float) -> float:
    """The smallest 1/2/5 x 10^k (or 1/2/4/8 x 1024^k above 1024) that is >= ``x``."""
    if x <= 0:
        return 1.0
    if x >= 1024:
        base = 1024.0 ** np.floor(np.log(x) / np.log(1024.0))
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            if base * m >= x:
                return base * m
    base = 10.0 ** np.floor(np.log10(x))
    for m in (1, 2, 5, 10):
        if base * m >= x:
            return base * m
    return base * 10  # pragma: no cover


def decimate_peaks(rows: np.ndarray, max_points: int) -> np.ndarray:
    """At most ~``max_points`` rows keeping every column's min and max per bucket.

    Each bucket of ``k`` consecutive rows becomes two rows: the column-wise minimum (at the
    bucket's first time) and maximum (at its last time), so spikes survive and monotonic
    counters stay monotonic.  Column 0 must be time.
    """
    n = len(rows)
    if n <= max_points or max_points < 4:
        return rows
    k = int(np.ceil(n / (max_points // 2)))
    head = n % k                          # keep the newest rows aligned to whole buckets
    body = rows[head:].reshape(-1, k, rows.shape[1])
    out = np.empty((2 * body.shape[0], rows.shape[1]))
    out[0::2] = body.min(axis=1)
    out[1::2] = body.max(axis=1)
    out[0::2, 0] = body[:, 0, 0]
    out[1::2, 0] = body[:, -1, 0]
    return np.vstack([rows[:head], out]) if head else out


class TimeSeriesGraph(pg.PlotWidget):
    """Base: palette styling, a legend in the title, alert markers and the shared-time-axis plumbing."""

    title = ""

    def __init__(self, parent=None, left_axis: Optional[pg.AxisItem] = None,
                 right_axis: Optional[pg.AxisItem] = None) -> None:
        axes = {"bottom": TimeAxis("bottom"), "left": left_axis or CountAxis("left")}
        if right_axis is not None:
            axes["right"] = right_axis
        super().__init__(parent, axisItems=axes)
        self.plot_item = self.getPlotItem()
        # no pyqtgraph clip-to-view / auto-downsample: both redo their work on every view-range
        # change, i.e. on every scrolling frame.  GraphPanel hands us rows already cut to the
        # window and peak-decimated to the plot's width (``decimate_peaks``), once per new sample.
        self.plot_item.hideButtons()
        self.plot_item.setMenuEnabled(False)
        self.plot_item.vb.setMouseEnabled(x=True, y=False)
        # y ranges are fitted by ``fit_y`` each frame, not by pyqtgraph's auto-range: that one
        # runs in prepareForPaint and schedules a second paint of every frame
        self.plot_item.vb.enableAutoRange(axis="y", enable=False)
        self.left_from_zero = True
        self.right_from_zero = True
        self.integer_y = False
        self._x: Optional[np.ndarray] = None
        self._y_left: list[np.ndarray] = []
        self._y_right: list[np.ndarray] = []
        self._y_ranges: dict[int, tuple[float, float]] = {}
        self.setMinimumHeight(110)
        self.right_vb: Optional[pg.ViewBox] = None
        if right_axis is not None:
            self._add_right_viewbox()
        # legend entries go into the title line, so a legend box never covers data
        self.legend_entries: list[tuple[str, str, str]] = []     # (name, colour, glyph)
        self._markers: list[pg.InfiniteLine] = []
        self._alerts_version = -1
        self.apply_palette()

    # ---------------------------------------------------------------- styling
    def apply_palette(self) -> None:
        bg, fg = plot_background(self), plot_foreground(self)
        self.setBackground(bg)
        for name in ("left", "bottom", "right", "top"):
            axis = self.plot_item.getAxis(name)
            axis.setPen(pg.mkPen(blend(fg, bg, 0.55)))
            axis.setTextPen(pg.mkPen(fg))
            # grid lines at major ticks only: the minor levels cost ~3 ms per axis per frame
            # (measured: 20 -> 48 frames/s for the widget) and add little but clutter
            axis.setStyle(maxTickLevel=0)
            if name != "bottom":
                # y axes change rarely (fit_y snaps): paint them from a pixmap cache
                axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.plot_item.getAxis("left").setWidth(LEFT_AXIS_WIDTH)
        if self.right_vb is not None:
            self.plot_item.getAxis("right").setWidth(RIGHT_AXIS_WIDTH)
        else:
            self.plot_item.showAxis("right")
            self.plot_item.getAxis("right").setStyle(showValues=False)
            self.plot_item.getAxis("right").setWidth(RIGHT_AXIS_WIDTH)
            self.plot_item.getAxis("right").setPen(pg.mkPen(None))
        self.plot_item.showGrid(x=True, y=True, alpha=grid_alpha(self))
        self._fg = fg
        # a long title must not squeeze the axes: let it be clipped instead of widening its column
        self.plot_item.titleLabel.setSizePolicy(QSizePolicy.Policy.Ignored,
                                                QSizePolicy.Policy.Preferred)
        self.update_title()

    def update_title(self) -> None:
        legend = "&nbsp;&nbsp;&nbsp;".join(
            f"<span style='color:{colour}'>{glyph}</span>&nbsp;{name}"
            for name, colour, glyph in self.legend_entries)
        self.plot_item.setTitle(f"<b>{self.title}</b>&nbsp;&nbsp;&nbsp;&nbsp;{legend}",
                                color=self._fg.name(), size="9pt")

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        # pyqtgraph sizes a hidden axis to 0 px and does not redo it when shown: fix the
        # widths again now, so the four graphs' plot areas line up
        super().showEvent(event)
        self.plot_item.getAxis("left").setWidth(LEFT_AXIS_WIDTH)
        self.plot_item.getAxis("right").setWidth(RIGHT_AXIS_WIDTH)

    def show_time_labels(self, show: bool) -> None:
        axis = self.plot_item.getAxis("bottom")
        axis.setStyle(showValues=show)
        axis.setHeight(None if show else 6)
        if show:
            axis.setLabel("time since target start", color=plot_foreground(self).name())

    def _add_right_viewbox(self) -> None:
        pi = self.plot_item
        self.right_vb = pg.ViewBox()
        pi.showAxis("right")
        pi.scene().addItem(self.right_vb)
        pi.getAxis("right").linkToView(self.right_vb)
        self.right_vb.setXLink(pi)
        self.right_vb.setMouseEnabled(x=False, y=False)
        self.right_vb.enableAutoRange(axis="y", enable=False)

        def sync_geometry() -> None:
            self.right_vb.setGeometry(pi.vb.sceneBoundingRect())
            self.right_vb.linkedViewChanged(pi.vb, self.right_vb.XAxis)
        pi.vb.sigResized.connect(sync_geometry)

    def _line(self, colour: str, name: str, width: float = 1.6, right: bool = False,
              dash: bool = False, fill: Optional[QColor] = None) -> pg.PlotDataItem:
        pen = pg.mkPen(colour, width=width,
                       style=Qt.PenStyle.DashLine if dash else Qt.PenStyle.SolidLine)
        item = pg.PlotDataItem(pen=pen)
        glyph = "&#9632;" if fill is not None else ("&#9476;" if dash else "&#9473;&#9473;")
        self.legend_entries.append((name, QColor(colour).name(), glyph))
        if hasattr(self, "_fg"):
            self.update_title()
        if fill is not None:
            item.setFillLevel(0)
            item.setBrush(fill)
        if right and self.right_vb is not None:
            self.right_vb.addItem(item)
        else:
            self.plot_item.addItem(item)
        return item

    # ---------------------------------------------------------------- data
    def refresh(self, rows: np.ndarray, model) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _plotted(self, x: np.ndarray, left: list[np.ndarray],
                 right: Optional[list[np.ndarray]] = None) -> None:
        """Remember what was drawn, for ``fit_y``."""
        self._x, self._y_left, self._y_right = x, left, right or []

    def fit_y(self, x_lo: float, x_hi: float) -> None:
        """Fit the y axes to the data visible in ``[x_lo, x_hi]`` (a few numpy reductions)."""
        x = self._x
        if x is None or not len(x):
            return
        i0 = max(0, int(np.searchsorted(x, x_lo)) - 1)
        i1 = min(len(x), int(np.searchsorted(x, x_hi, side="right")) + 1)
        if i1 <= i0:
            return
        for arrays, vb, from_zero in ((self._y_left, self.plot_item.vb, self.left_from_zero),
                                      (self._y_right, self.right_vb, self.right_from_zero)):
            if not arrays or vb is None:
                continue
            lo = min(float(a[i0:i1].min()) for a in arrays)
            hi = max(float(a[i0:i1].max()) for a in arrays)
            if from_zero:
                lo = min(lo, 0.0)
            # snap to a coarse step so the range (and the cached axis picture) changes only when
            # the data outgrows it, not on every sample: calmer to look at, cheaper to draw
            span = max(hi - lo, 1e-9)
            step = nice_step(span / 6.0)
            if self.integer_y:
                step = max(step, 1.0)
            hi = np.ceil((hi + span * 0.12) / step) * step      # headroom: never touch the top
            lo = 0.0 if from_zero and lo == 0.0 else np.floor(lo / step) * step
            # from zero: a sliver below 0 so the "0" tick label is drawn
            target = (-(hi - lo) * 0.03 if from_zero and lo == 0.0 else float(lo), float(hi))
            if self._y_ranges.get(id(vb)) != target:
                self._y_ranges[id(vb)] = target
                vb.setYRange(*target, padding=0)

    def refresh_alerts(self, model) -> None:
        """Vertical markers where alerts fired (rebuilt only when the alert list changed)."""
        if model.alerts_version == self._alerts_version:
            return
        self._alerts_version = model.alerts_version
        for line in self._markers:
            self.plot_item.removeItem(line)
        self._markers.clear()
        for alert in list(model.alerts)[-MAX_ALERT_MARKERS:]:
            colour = SEVERITY_COLOURS.get(alert.severity, SEVERITY_COLOURS["warning"])
            line = pg.InfiniteLine(pos=alert.t - model.t0, angle=90, movable=False,
                                   pen=pg.mkPen(colour, width=1.4, style=Qt.PenStyle.DashLine))
            line.setToolTip(f"{alert.kind} ({alert.severity}): {alert.message}")
            line.setZValue(50)
            self.plot_item.addItem(line, ignoreBounds=True)
            self._markers.append(line)


class OutstandingOpsGraph(TimeSeriesGraph):
    """In-flight ops, stacked by kind."""

    title = "Outstanding operations by kind"

    def __init__(self, parent=None) -> None:
        super().__init__(parent, left_axis=CountAxis("left", integer=True))
        self.integer_y = True
        self._curves: dict[str, pg.PlotDataItem] = {}

    def _curve_for(self, kind: str, order: int) -> pg.PlotDataItem:
        curve = self._curves.get(kind)
        if curve is None:
            colour = QColor(KIND_COLOURS.get(kind, KIND_COLOURS["other"]))
            fill = blend(colour, plot_background(self), 0.35)
            curve = self._line(colour.darker(115).name(), kind, width=1.2, fill=fill)
            self._curves[kind] = curve
        curve.setZValue(-order)
        return curve

    def refresh(self, rows: np.ndarray, model) -> None:
        if not len(rows):
            return
        kinds = [k for k in (c[4:] for c in KIND_COLUMNS) if k in model.kinds_seen
                 or (k == "other" and rows[:, COL["out_other"]].any())]
        if not kinds:
            kinds = ["recv", "send"]        # an idle target: show a flat, labelled zero
        cols = [COL[f"out_{k}"] for k in kinds]
        stacked = np.cumsum(rows[:, cols], axis=1)
        x = rows[:, 0]
        for i, kind in enumerate(kinds):
            self._curve_for(kind, i).setData(x, stacked[:, i])
        self._plotted(x, [stacked[:, -1]])


class MemoryGraph(TimeSeriesGraph):
    """Process RSS (left axis) and bytes held in op buffers (right axis)."""

    title = "Memory"

    def __init__(self, parent=None) -> None:
        super().__init__(parent, left_axis=ByteAxis("left"), right_axis=ByteAxis("right"))
        self.left_from_zero = False        # RSS: show its movement, not its distance from 0
        self.rss = self._line(SERIES_COLOURS["rss"], "RSS (left)", width=1.8)
        buf_colour = QColor(SERIES_COLOURS["buffer_bytes"])
        self.buffers = self._line(buf_colour.name(), "op buffer bytes (right)", right=True,
                                  fill=blend(buf_colour, plot_background(self), 0.7))

    def refresh(self, rows: np.ndarray, model) -> None:
        if not len(rows):
            return
        x = rows[:, 0]
        self.rss.setData(x, rows[:, COL["rss"]])
        self.buffers.setData(x, rows[:, COL["buffer_bytes"]])
        self._plotted(x, [rows[:, COL["rss"]]], [rows[:, COL["buffer_bytes"]]])


class ReceivedDataGraph(TimeSeriesGraph):
    """Cumulative bytes received from the OS vs delivered to protocols, and the receive rate."""

    title = "Received data"

    def __init__(self, parent=None) -> None:
        super().__init__(parent, left_axis=ByteAxis("left"),
                         right_axis=ByteAxis("right", suffix="/s"))
        rate_colour = QColor(SERIES_COLOURS["recv_rate"])
        self.rate = self._line(rate_colour.name(), "receive rate (right)", width=1.0, right=True,
                               fill=blend(rate_colour, plot_background(self), 0.75))
        self.received = self._line(SERIES_COLOURS["received"], "received (cumulative)", width=2.4)
        self.delivered = self._line(SERIES_COLOURS["delivered"], "delivered", width=1.6,
                                    dash=True)

    def refresh(self, rows: np.ndarray, model) -> None:
        if not len(rows):
            return
        x = rows[:, 0]
        self.received.setData(x, rows[:, COL["bytes_received"]])
        self.delivered.setData(x, rows[:, COL["bytes_delivered"]])
        self.rate.setData(x, rows[:, COL["recv_rate"]])
        self._plotted(x, [rows[:, COL["bytes_received"]], rows[:, COL["bytes_delivered"]]],
                      [rows[:, COL["recv_rate"]]])


class LoopLagGraph(TimeSeriesGraph):
    """Event-loop lag in milliseconds."""

    title = "Loop lag"

    def __init__(self, parent=None) -> None:
        super().__init__(parent, left_axis=CountAxis("left", suffix=" ms"))
        colour = QColor(SERIES_COLOURS["lag"])
        self.lag = self._line(colour.name(), "lag (ms)", width=1.4,
                              fill=blend(colour, plot_background(self), 0.75))

    def refresh(self, rows: np.ndarray, model) -> None:
        if not len(rows):
            return
        self.lag.setData(rows[:, 0], rows[:, COL["lag_ms"]])
        self._plotted(rows[:, 0], [rows[:, COL["lag_ms"]]])


ALL_GRAPHS = (OutstandingOpsGraph, MemoryGraph, ReceivedDataGraph, LoopLagGraph)
