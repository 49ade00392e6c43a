"""Human units for the numbers the app shows: bytes in binary prefixes, durations, rates.

Graph axes need more than a formatter: pyqtgraph picks tick *positions* at decimal-nice values
(0, 500 000, 1 000 000), which read badly as binary sizes (488 KiB, 977 KiB).  So
``binary_scale`` picks one power-of-1024 unit for a whole axis range; the axis asks pyqtgraph for
nice spacings *in that unit* and multiplies back (see ``app.widgets.axes``).  Everything here is
plain Python: no Qt, so the model and the tests can use it too.
"""
from __future__ import annotations

BINARY_UNITS: tuple[str, ...] = ("B", "KiB", "MiB", "GiB", "TiB")


def binary_scale(magnitude: float) -> tuple[float, str]:
    """``(divisor, unit)`` that shows ``magnitude`` bytes as a number below 1024."""
    magnitude = abs(magnitude)
    divisor = 1.0
    for unit in BINARY_UNITS:
        if magnitude < 1024.0 * divisor or unit == BINARY_UNITS[-1]:
            return divisor, unit
        divisor *= 1024.0
    return divisor, BINARY_UNITS[-1]  # pragma: no cover - loop always returns


def format_bytes(n: float, precision: int = 1) -> str:
    """``1536 -> '1.5 KiB'``; whole bytes print without decimals."""
    divisor, unit = binary_scale(n)
    if unit == "B":
        return f"{int(n)} B"
    return f"{n / divisor:.{precision}f} {unit}"


def format_rate(bytes_per_s: float) -> str:
    return format_bytes(bytes_per_s) + "/s"


def format_duration(seconds: float) -> str:
    """Ages in the ops table: '850 ms', '12.4 s', '3 m 05 s', '2 h 01 m'."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60.0:
        return f"{seconds:.1f} s"
    if seconds < 3600.0:
        m, s = divmod(int(seconds), 60)
        return f"{m} m {s:02d} s"
    h, rem = divmod(int(seconds), 3600)
    return f"{h} h {rem // 60:02d} m"


def format_clock(seconds: float) -> str:
    """Time-axis ticks: seconds since the target started, as '45 s', '2:05', '1:02:03'."""
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60.0:
        return f"{sign}{seconds:g} s" if seconds != int(seconds) else f"{sign}{int(seconds)} s"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h}:{m:02d}:{s:02d}" if h else f"{sign}{m}:{s:02d}"


def format_count(n: float) -> str:
    """Compact counts for the status bar: 950, 12.3k, 1.2M."""
    n = float(n)
    if abs(n) < 1000:
        return f"{n:.0f}"
    if abs(n) < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"
