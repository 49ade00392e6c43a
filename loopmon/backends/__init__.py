"""Proactor backends: the selector-emulated one (POSIX) and the IOCP wrapper (Windows).

``base`` documents the interface and its overlapped semantics; each backend module opens
with an essay on its mechanism.  Importing this package imports no platform-only module.
"""
from .base import KNOWN_FAULTS, ProactorBackend, check_faults

__all__ = ["ProactorBackend", "KNOWN_FAULTS", "check_faults"]
