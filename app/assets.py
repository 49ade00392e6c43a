"""Finding the shipped resources: the Qt style sheet, SVG icons and the desktop entry.

pyproject maps the repo's top-level ``resources/`` folder into the wheel as the package
``app.resources``, so an installed app finds them in ``<app>/resources``; running from a checkout
there is no such folder and they sit in ``<repo>/resources``.  ``resource_dir()`` tries both, in
that order, and everything else asks it — never a path relative to the working directory.
A missing resource is not fatal: no style sheet means the plain platform look, a missing icon
an empty one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

_APP_DIR = Path(__file__).resolve().parent


def resource_dir() -> Optional[Path]:
    for candidate in (_APP_DIR / "resources", _APP_DIR.parent / "resources"):
        if (candidate / "loopmon.qss").is_file():
            return candidate
    return None


def resource_path(name: str) -> Optional[Path]:
    base = resource_dir()
    if base is None:
        return None
    path = base / name
    return path if path.exists() else None


def style_sheet() -> str:
    path = resource_path("loopmon.qss")
    try:
        return path.read_text(encoding="utf-8") if path else ""
    except OSError:
        return ""


def icon(name: str):
    """A ``QIcon`` from ``resources/icons/<name>.svg`` (empty if missing)."""
    from PySide6.QtGui import QIcon
    path = resource_path(f"icons/{name}.svg")
    return QIcon(str(path)) if path else QIcon()
