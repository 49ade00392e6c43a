"""Axis items that speak units: binary byte sizes, byte rates and seconds since start.

pyqtgraph's own unit support (``setLabel(units="B")``) uses SI prefixes (kB = 1000 B) and puts
ticks at decimal-nice positions.  Memory reads in KiB/MiB, so ``ByteAxis`` picks one binary unit
for the visible range, asks the base class for nice spacings *in that unit* and scales them back:
ticks land on 0, 256 KiB, 512 KiB rather than on 488.3 KiB.  The unit goes into each tick label
("512 KiB") instead of the axis title, which keeps the title short and the unit visible even when
the axis is narrow.  ``TimeAxis`` prints seconds since the target started as "45 s" / "2:05".
"""
from __future__ import annotations

import pyqtgraph as pg

from app.units import binary_scale, format_clock


class ByteAxis(pg.AxisItem):
    """Ticks in B / KiB / MiB / GiB; ``suffix`` (e.g. "/s") is appended to each label."""

    def __init__(self, orientation: str = "left", suffix: str = "", **kw) -> None:
        super().__init__(orientation, **kw)
        self.suffix = suffix
        self.enableAutoSIPrefix(False)

    def _scale(self, lo: float, hi: float) -> tuple[float, str]:
        return binary_scale(max(abs(lo), abs(hi)))

    def tickSpacing(self, minVal, maxVal, size):  # noqa: N802 - pyqtgraph API
        div, _unit = self._scale(minVal, maxVal)
        spacings = super().tickSpacing(minVal / div, maxVal / div, size)
        return [(spacing * div, offset * div) for spacing, offset in spacings]

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph API
        if not values:
            return []
        lo, hi = self.range if hasattr(self, "range") else (min(values), max(values))
        div, unit = self._scale(lo, hi)
        step = spacing / div
        decimals = 0 if step >= 1 else (1 if step >= 0.1 else 2)
        return [f"{v / div:.{decimals}f} {unit}{self.suffix}" for v in values]


class TimeAxis(pg.AxisItem):
    """Seconds since the target started, formatted as '45 s' or 'm:ss'."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph API
        return [format_clock(round(v, 3)) for v in values]


class CountAxis(pg.AxisItem):
    """Plain numbers with no SI prefix games; ``integer`` axes (op counts) never tick at 0.5."""

    def __init__(self, orientation: str = "left", suffix: str = "", integer: bool = False,
                 **kw) -> None:
        super().__init__(orientation, **kw)
        self.suffix = suffix
        self.integer = integer
        self.enableAutoSIPrefix(False)

    def tickSpacing(self, minVal, maxVal, size):  # noqa: N802 - pyqtgraph API
        levels = super().tickSpacing(minVal, maxVal, size)
        if self.integer:
            levels = [(max(1.0, spacing), offset) for spacing, offset in levels]
        return levels

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph API
        if spacing >= 1:
            return [f"{v:.0f}{self.suffix}" for v in values]
        return [f"{v:.{1 if spacing >= 0.1 else 2}f}{self.suffix}" for v in values]
