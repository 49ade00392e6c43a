"""What a POSIX loop needs and ``BaseProactorEventLoop`` lacks: signals, children, pipes, AF_UNIX.

``asyncio.proactor_events`` was written for Windows, so the base class has no signal
handlers, no subprocess support, no Unix-domain sockets and pipe transports that assume
Windows named pipes.  ``PosixExtrasMixin`` supplies them for ``loopmon.ProactorEventLoop``.

Where the stdlib ``unix_events`` logic only uses generic loop APIs we *borrow the very
function objects* of ``_UnixSelectorEventLoop`` (signal handling, ``create_unix_connection``,
``create_unix_server``): they are plain functions taking ``self``, so each Python version
gets its own exact semantics and argument checks (3.13's ``cleanup_socket`` included)
without a copy drifting out of date.  What they need from ``self`` -- ``_signal_handlers``,
``_unix_server_sockets``, ``_csock``, ``_create_connection_transport``, ``sock_connect``,
``_start_serving`` -- the loop provides.

Traps worth knowing:

* **The wakeup fd.**  Signals reach the loop as bytes on the self-pipe (``set_wakeup_fd``),
  which the self-pipe reader passes to ``_process_self_data``.  ``BaseProactorEventLoop``
  grabs the process-wide wakeup fd at construction and drops it at close, which on POSIX
  would silently steal signal delivery from another loop; the loop puts the previous
  owner back (see ``loop.py``) so the fd is only taken by ``add_signal_handler``, as on
  ``unix_events``.
* **Children.**  Child watchers are deprecated from 3.12 (and warn), so we do not use them:
  with ``os.pidfd_open`` (Linux >= 5.3) the child's pidfd is an ``add_reader`` fd that turns
  readable at exit; elsewhere a daemon thread blocks in ``waitpid`` for that one pid.  If
  someone else reaped the child first (``Popen.poll()`` in ``transport.close()`` can), the
  returncode ``Popen`` recorded is used, else 255 as asyncio does.
* **Pipes must be non-blocking** before the first read is tried inline, or the loop blocks.
"""
from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import warnings
from asyncio import unix_events
from typing import Any

from .transports import DatagramTransport, ReadPipeTransport, WritePipeTransport

logger = logging.getLogger("loopmon")
_Unix = unix_events._UnixSelectorEventLoop
_unix_remove_signal_handler = _Unix.remove_signal_handler


def _exit_code(status: int) -> int:
    try:
        return os.waitstatus_to_exitcode(status)
    except ValueError:
        return status


def _check_pipe(pipe: Any, writer: bool) -> int:
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        if writer:
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        raise ValueError("Pipe transport is for pipes/sockets only.")
    os.set_blocking(fileno, False)
    return fileno


class PosixExtrasMixin:
    """Signals, subprocesses, pipes and Unix sockets for a proactor loop on POSIX."""

    # --- signals: unix_events' own functions (they use _signal_handlers, _csock) ---------
    add_signal_handler = _Unix.add_signal_handler
    _handle_signal = _Unix._handle_signal
    _check_signal = _Unix._check_signal
    _process_self_data = _Unix._process_self_data

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove a handler for a signal (restores SIG_DFL / default_int_handler)."""
        return _unix_remove_signal_handler(self, sig)

    def _remove_all_signal_handlers(self) -> None:
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(f"Closing the loop {self!r} on interpreter shutdown stage, "
                          f"skipping signal handlers removal", ResourceWarning, source=self)
            self._signal_handlers.clear()

    # --- Unix-domain sockets: unix_events' own functions ---------------------------------
    create_unix_connection = _Unix.create_unix_connection
    create_unix_server = _Unix.create_unix_server

    def _stop_serving(self, sock: Any) -> None:
        path = sock.getsockname() if sock in self._unix_server_sockets else None
        super()._stop_serving(sock)
        if path is not None:
            prev_ino = self._unix_server_sockets.pop(sock)
            try:
                if os.stat(path).st_ino == prev_ino:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    # --- pipes ---------------------------------------------------------------------------
    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        _check_pipe(pipe, writer=False)
        return self._track_transport(pipe, ReadPipeTransport(self, pipe, protocol, waiter, extra))

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        _check_pipe(pipe, writer=True)
        return self._track_transport(pipe, WritePipeTransport(self, pipe, protocol, waiter, extra))

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return self._track_transport(
            sock, DatagramTransport(self, sock, protocol, address, waiter, extra))

    # --- subprocesses --------------------------------------------------------------------
    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, extra=None, **kwargs):
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs)
        self._watch_child(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _watch_child(self, pid: int, transp: Any) -> None:
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = -1
        if pidfd >= 0:
            self._child_pidfds[pidfd] = pid
            self.add_reader(pidfd, self._child_pidfd_ready, pidfd, pid, transp)
            return
        threading.Thread(target=self._child_waitpid_thread, args=(pid, transp),
                         name=f"loopmon-waitpid-{pid}", daemon=True).start()

    def _child_pidfd_ready(self, pidfd: int, pid: int, transp: Any) -> None:
        self.remove_reader(pidfd)
        self._child_pidfds.pop(pidfd, None)
        os.close(pidfd)
        transp._process_exited(self._reap(pid, transp, os.WNOHANG))

    def _child_waitpid_thread(self, pid: int, transp: Any) -> None:
        returncode = self._reap(pid, transp, 0)
        try:
            self.call_soon_threadsafe(transp._process_exited, returncode)
        except RuntimeError:
            pass  # the loop closed while the child ran

    @staticmethod
    def _reap(pid: int, transp: Any, options: int) -> int:
        try:
            wpid, status = os.waitpid(pid, options)
        except ChildProcessError:
            wpid, status = pid, None
        if wpid == 0:           # pidfd readable but not yet reapable: rare; block briefly
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = None
        if status is not None:
            return _exit_code(status)
        proc = getattr(transp, "_proc", None)
        if proc is not None and proc.returncode is not None:
            return proc.returncode          # Popen.poll() reaped it first
        logger.warning("child process pid %d exit status already read: "
                       "will report returncode 255", pid)
        return 255

    def _close_child_pidfds(self) -> None:
        for pidfd in list(self._child_pidfds):
            try:
                os.close(pidfd)
            except OSError:
                pass
        self._child_pidfds.clear()

