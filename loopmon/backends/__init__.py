"""Proactor backends: selector-emulated (POSIX), io_uring (Linux >= 5.6), IOCP (Windows).

``base`` documents the interface and its overlapped semantics; each backend module opens
with an essay on its mechanism.  Importing this package imports no platform-only module.

* ``selector`` (+ the ``selector_*`` modules: ``selector_receive``/``selector_send`` the op
  methods, ``selector_completion`` the readiness pass, ``selector_ops`` a pending op's life;
  and ``fdtable``, ``faults``, ``stream_receive``, ``common``): try the syscall first, wait
  for readiness only when it would block.  The default everywhere.
* ``io_uring`` (+ the ``uring_*`` modules: ``uring_ring`` the kernel rings and syscalls,
  ``uring_memory`` pinned buffers, ``uring_ops`` one op's life, ``uring_completion`` the
  completion pass, ``uring_carry`` results of cancelled ops carried to the next reader):
  real overlapped semantics, chosen with ``backend="io_uring"`` or ``LOOPMON_BACKEND``.
* ``iocp``: the stdlib ``IocpProactor`` wrapped with the same instrumentation.
"""
from .base import KNOWN_FAULTS, ProactorBackend, check_faults

__all__ = ["ProactorBackend", "KNOWN_FAULTS", "check_faults"]
