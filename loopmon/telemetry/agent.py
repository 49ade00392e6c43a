"""The agent: the telemetry server inside the monitored process.

Mechanism
---------
The agent runs on its own daemon thread with its **own plain asyncio selector loop** -- never
the monitored loop, and never a loop made by whatever event-loop policy the program installed
(``loopmon run`` installs loopmon's; the agent must not monitor itself).  It listens on a Unix
socket in the per-user runtime dir (see ``discovery``) and, if asked, on a loopback TCP
address, and writes the discovery file.

Clients are served by ``agent_sessions.ClientSessions`` (the handshake, the backlog and the
live stream of one Subscription each; its docstring has the details).  The agent's loop also
**drives the collector** (``Collector.drive_from``): no collector thread of its own, so a
drain, a tick, the fan-out and the write to every client happen in one wakeup of this one
thread -- each wakeup of a thread takes the GIL from the busy monitored loop.  Nothing a
client does can block the program: the program's thread never waits on the agent.

Which loop?  The agent follows the most recently attached Monitor (``attach``): ``loopmon
run`` attaches every instrumented loop its policy creates, so a program that calls
``asyncio.run()`` twice is followed from one loop to the next (counters restart at zero).
A collector's own "loop closed" Goodbye is therefore not forwarded; clients get ``Goodbye``
when the agent closes (program exit), then end of stream.

Traps
-----
* Collectors of the program's earlier loops that are still running when the agent closes go
  on, each on a thread of its own (``Collector.release_driver``).
* Clean-up at exit removes the socket and the discovery file; a SIGKILLed process leaves
  them, and ``discovery.list_processes()`` prunes them later.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

from ..monitor import Monitor
from . import discovery
from .agent_sessions import ClientSessions
from .collector import DEFAULT_SAMPLE_PERIOD, Collector
from .endpoints import format_tcp_endpoint, parse_listen  # noqa: F401 (re-exported)
from .subscription import Subscription

log = logging.getLogger("loopmon.agent")


class _AgentLoop(asyncio.SelectorEventLoop):
    """The agent's plain asyncio loop, reading its self-pipe with one ``recv`` per wakeup.

    asyncio reads until ``EAGAIN``: two system calls per collector tick, each a GIL hand-off
    the monitored loop pays for (see ``agent_sessions``).  A byte left over (more than 4096
    wakeups queued) keeps the pipe readable and is read on the next iteration.  (A private
    asyncio hook, present in 3.10-3.13; if it disappears the default reading is used.)"""

    def _read_from_self(self) -> None:
        try:
            data = self._ssock.recv(4096)          # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self._process_self_data(data)          # type: ignore[attr-defined]


class AgentError(OSError):
    """The agent could not start serving (bind failed, runtime dir unusable ...)."""


class Agent(ClientSessions):
    """Serves the telemetry of the attached Monitor to any number of clients."""

    def __init__(self, *, listen: Optional[str] = None, listen_any: bool = False,
                 unix: bool = True, token: Optional[str] = None,
                 sample_period: float = DEFAULT_SAMPLE_PERIOD, record: Optional[str] = None,
                 record_max_bytes: Optional[int] = None, argv: Optional[list[str]] = None,
                 discovery_file: bool = True) -> None:
        self.token = token or secrets.token_hex(16)
        self.sample_period = sample_period
        self.argv = list(sys.argv if argv is None else argv)
        self._tcp_addr = parse_listen(listen, listen_any=listen_any) if listen else None
        self._want_unix = unix
        self._want_discovery = discovery_file
        self._record_path = record
        self._record_max = record_max_bytes
        self.unix_path: Optional[str] = None
        self.tcp_endpoint: Optional[str] = None
        self.collector: Optional[Collector] = None
        self.started_wall = time.time()
        self.rejected = 0                       # bad tokens, bad versions, garbage
        self.sessions = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._servers: list[asyncio.base_events.Server] = []
        self._session_tasks: set[asyncio.Task] = set()
        self._changed: Optional[asyncio.Condition] = None
        self._enc_cache: OrderedDict = OrderedDict()
        self._closing = False
        self._close_reason = ""
        self._closed = False
        self._subs: set[Subscription] = set()
        self._discovery_written = False
        self._recorder: Any = None
        self._pid = os.getpid()
        self._loop_ident: Optional[int] = None        # the agent thread's ident
        self._driven: list[Collector] = []            # collectors our loop drives

    # ---------------------------------------------------------------- public
    @property
    def endpoint(self) -> str:
        if self.unix_path:
            return "unix:" + self.unix_path
        return self.tcp_endpoint or ""

    def start(self) -> "Agent":
        """Bind the sockets (errors raise here, synchronously) and start serving."""
        if self._thread is not None:
            return self
        self._pid = os.getpid()
        if self._record_path:
            from .recording import RecordingWriter
            try:
                self._recorder = RecordingWriter(self._record_path, max_bytes=self._record_max)
            except OSError as exc:
                raise AgentError(f"cannot write the recording {self._record_path}: "
                                 f"{exc.strerror or exc}") from exc
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = _AgentLoop()                      # plain asyncio, whatever the policy

        def run() -> None:
            # no asyncio.set_event_loop(): that goes through the (program's) policy
            self._loop_ident = threading.get_ident()
            try:
                self._loop.run_until_complete(self._bind())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                self._loop.close()
                return
            ready.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()

        self._thread = threading.Thread(target=run, name="loopmon-agent", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            exc = failure[0]
            if self._recorder is not None:
                self._recorder.close("agent failed to start")
            if isinstance(exc, OSError):
                where = (format_tcp_endpoint(*self._tcp_addr) if self._tcp_addr
                         else str(discovery.runtime_dir()))
                raise AgentError(f"cannot serve telemetry on {where}: "
                                 f"{exc.strerror or exc}") from exc
            raise exc
        if self._recorder is not None:
            asyncio.run_coroutine_threadsafe(self._start_recording(), self._loop)
        return self

    def attach(self, monitor: Monitor) -> Collector:
        """Serve ``monitor`` from now on (thread-safe; call from any thread)."""
        col = Collector.for_monitor(monitor, sample_period=self.sample_period, argv=self.argv)
        if os.getpid() != self._pid:
            return col          # a forked child: the agent (and its socket) is the parent's
        if col is self.collector:
            return col          # attached twice (policy and loop factory both saw it)
        # the agent's loop drives the collector (no thread of its own): see the docstring
        if not (self._thread is not None and not self._closing and col.drive_from(self._loop)):
            col.start()
        else:   # kept to hand back at close; finished ones (closed loops) are let go
            self._driven = [c for c in self._driven if not c.finished and c is not col]
            self._driven.append(col)
        self.collector = col
        if self._want_discovery and self._thread is not None:
            try:
                self._write_discovery(str(monitor.backend))
            except Exception as exc:
                log.warning("loopmon: cannot write the discovery file: %s", exc)
        if self._loop is not None and not self._closing:
            try:
                self._loop.call_soon_threadsafe(self._notify_changed)
            except RuntimeError:
                pass
        return col

    def close(self, reason: str = "program exited", timeout: float = 2.0) -> None:
        """Flush, say Goodbye to every client, stop serving and remove socket + discovery file."""
        if self._closed or os.getpid() != self._pid:
            return              # closed already, or a forked child: the files are the parent's
        self._closed = True
        self._close_reason = reason
        self._closing = True           # before the collector's Goodbye reaches the sessions
        col = self.collector
        if col is not None:
            col.stop(reason)
        if self._loop is not None and self._thread is not None:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(reason), self._loop)
            try:
                fut.result(timeout)
            except Exception as exc:
                log.debug("agent shutdown: %r", exc)
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:
                pass
            self._thread.join(timeout)
        for other in self._driven:      # older loops' collectors, if still running, go on
            other.release_driver()      # on threads of their own
        self._driven.clear()
        if self._recorder is not None:
            self._recorder.close(reason)
        self._cleanup_files()

    # ---------------------------------------------------------------- internals
    def _write_discovery(self, backend: str) -> None:
        entry = discovery.ProcessEntry(
            pid=os.getpid(), command=" ".join(self.argv), backend=backend,
            endpoint=self.endpoint, started_wall=self.started_wall, token=self.token,
            argv=self.argv, python=sys.version.split()[0],
            extra_endpoints=[self.tcp_endpoint] if self.unix_path and self.tcp_endpoint else [])
        discovery.write_entry(entry)
        self._discovery_written = True

    def _cleanup_files(self) -> None:
        if self._discovery_written:
            try:
                os.unlink(discovery.entry_path(os.getpid()))
            except OSError:
                pass
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

    async def _bind(self) -> None:
        self._changed = asyncio.Condition()
        if self._want_unix and hasattr(socket, "AF_UNIX"):
            directory = discovery.runtime_dir(create=True)
            path = str(directory / f"{os.getpid()}.sock")
            try:
                os.unlink(path)                       # a stale socket of a reused pid
            except OSError:
                pass
            old_umask = os.umask(0o177)               # the socket is born 0600
            try:
                server = await asyncio.start_unix_server(self._serve, path=path)
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            self._servers.append(server)
            self.unix_path = path
        if self._tcp_addr is not None:
            host, port = self._tcp_addr
            server = await asyncio.start_server(self._serve, host=host, port=port)
            self._servers.append(server)
            sockname = server.sockets[0].getsockname()
            self.tcp_endpoint = format_tcp_endpoint(sockname[0], sockname[1])
        if not self._servers:
            raise OSError("loopmon agent: no endpoint to serve (no Unix sockets and no --listen)")

    def _notify_changed(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()
        self._loop.create_task(notify())
        # sessions whose collector already finished (its loop closed before this one was
        # attached) wait on their old subscription's wakeup, which will never come again:
        # wake them so they follow the new collector
        for sub in list(self._subs):
            wake = getattr(sub, "wake_event", None)
            if wake is not None:
                wake.set()

    async def _shutdown(self, reason: str) -> None:
        for server in self._servers:
            server.close()
        async with self._changed:
            self._changed.notify_all()
        for sub in list(self._subs):
            sub.wake_event.set()      # type: ignore[attr-defined]
        tasks = list(self._session_tasks)
        if tasks:
            # healthy clients take the Goodbye in milliseconds; a stalled one must not
            # hold up the exit of the program it watches
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            for t in pending:
                t.cancel()                # stalled clients: abort
            if pending:
                await asyncio.wait(pending, timeout=0.25)
