"""Colours that follow the system palette, and the few fixed series colours.

Rule (issue 4): chrome takes its colours from ``QPalette`` roles, so light and dark desktop
themes both look native; only *data* colours are fixed, and they are picked (Okabe–Ito /
Tableau-like mid tones) to read on both a white and a near-black background.  pyqtgraph's
defaults (black background, grey axes) are global config options — we never touch those
globals, because an embedding application may use pyqtgraph itself; each plot is styled
locally from the palette of the widget it lives in.
"""
from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QWidget

# op kinds, in the order of loopmon.monitor.events.KIND_NAMES (+ "other")
KIND_COLOURS: dict[str, str] = {
    "recv": "#4C9BE8", "recv_into": "#2F7FD0", "recvfrom": "#7FB7F0", "recvfrom_into": "#1F5FA8",
    "send": "#F28E2B", "sendto": "#E0A040", "accept": "#59A14F", "connect": "#B07AA1",
    "sendfile": "#EDC948", "read_pipe": "#76B7B2", "write_pipe": "#FF9DA7", "wait": "#9C9C9C",
    "other": "#808080",
}
SERIES_COLOURS: dict[str, str] = {
    "rss": "#B07AA1",          # purple
    "buffer_bytes": "#F28E2B", # orange
    "received": "#4C9BE8",     # blue
    "delivered": "#59A14F",    # green
    "recv_rate": "#9C755F",    # brown
    "lag": "#E15759",          # red
    "discarded": "#E15759",
}
# timeline outcomes: pending, completed, cancelled, failed, lost data
OUTCOME_COLOURS: tuple[str, ...] = ("#4C9BE8", "#59A14F", "#EDC948", "#E15759", "#B040C0")
SEVERITY_COLOURS: dict[str, str] = {"warning": "#F28E2B", "critical": "#E15759"}
HIGHLIGHT_LONG_PENDING = QColor(242, 142, 43, 70)   # translucent orange over any base colour


def palette_colour(widget: QWidget, role: QPalette.ColorRole) -> QColor:
    return widget.palette().color(role)


def plot_background(widget: QWidget) -> QColor:
    return palette_colour(widget, QPalette.ColorRole.Base)


def plot_foreground(widget: QWidget) -> QColor:
    return palette_colour(widget, QPalette.ColorRole.Text)


def grid_alpha(widget: QWidget) -> float:
    """Grid lines a touch stronger on dark backgrounds, where thin lines vanish."""
    return 0.22 if plot_background(widget).lightness() < 128 else 0.15


def with_alpha(colour: str | QColor, alpha: int) -> QColor:
    c = QColor(colour)
    c.setAlpha(alpha)
    return c


def blend(a: QColor, b: QColor, f: float) -> QColor:
    """``a`` moved fraction ``f`` toward ``b``: fills that stay legible on either theme."""
    return QColor(int(a.red() + (b.red() - a.red()) * f),
                  int(a.green() + (b.green() - a.green()) * f),
                  int(a.blue() + (b.blue() - a.blue()) * f))
