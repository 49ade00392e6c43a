"""Work around a PySide6 reference-count bug that crashes Qt apps on Python < 3.12.

Measured here with PySide6-Essentials 6.12.0 on CPython 3.11: shiboken *decrements* the
reference count of ``None`` once per processed Qt event, per slot call that returns ``None``
and per Python virtual override (``paintEvent``, ``eventFilter``, ...) — about a thousand times a
second in a live pyqtgraph window.  On 3.12+ ``None`` is immortal (PEP 683), so the bug is
invisible there; on 3.11 ``None`` starts near 3 000 references and the process dies within
seconds with ``Fatal Python error: none_dealloc: deallocating None``.

``True`` and ``False`` suffer the same (pyqtgraph's ``setData`` path), so the fix covers every
object PEP 683 made immortal that shiboken hands out: ``None``, the bools, ``Ellipsis``,
``NotImplemented``, the empty tuple / str / bytes and the small ints.

The fix does what PEP 683 does: give those an enormous reference count (2**40) so the stray
decrements can never reach zero in any realistic lifetime (35 years at a thousand per second).
``None`` is never freed anyway, so this changes nothing else.  It is applied once, on import of
the ``app`` package, only on CPython < 3.12 and only with an affected shiboken (6.11 and later:
6.10.3 measured clean, 6.11.3 and 6.12.0 leak); ``sys.getrefcount(None)`` then just reads huge.
pyproject.toml keeps CPython < 3.12 on PySide6 < 6.11, so the guard is for installs that force a
newer one.
"""
from __future__ import annotations

import sys

_TOP_UP = 1 << 40


def _singletons() -> list[object]:
    # what PEP 683 made immortal and shiboken may hand out without a reference of its own
    return [None, True, False, Ellipsis, NotImplemented, (), "", b"", *range(-5, 257)]


def _shiboken_is_affected() -> bool:
    """True for shiboken6 6.11 and later (and when its version cannot be read: be safe)."""
    try:
        from importlib.metadata import version
        major, minor = (int(x) for x in version("shiboken6").split(".")[:2])
    except Exception:
        return True
    return (major, minor) >= (6, 11)


def make_singletons_immortal() -> bool:
    """Give the singletons a practically infinite refcount on CPython < 3.12; True if applied."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    if not _shiboken_is_affected():
        return False
    import ctypes
    for obj in _singletons():
        refcnt = ctypes.c_ssize_t.from_address(id(obj))   # ob_refcnt is the first field
        if refcnt.value < _TOP_UP:
            refcnt.value += _TOP_UP
    return True


make_singletons_immortal()
