"""The agent: the telemetry server inside the monitored process.

Mechanism
---------
The agent runs on its own daemon thread with its **own plain asyncio selector loop** -- never
the monitored loop, and never a loop made by whatever event-loop policy the program installed
(``loopmon run`` installs loopmon's; the agent must not monitor itself).  It listens on a Unix
socket in the per-user runtime dir (see ``discovery``) and, if asked, on a loopback TCP
address, and writes the discovery file.

A connection goes: both sides send the 6-byte stream header; the client sends ``ClientHello``
with the token; a wrong token gets an ``ErrorFrame``, a log line and a close.  Otherwise the
agent sends ``Hello``, then the Subscription's backlog (``History``, ``Outstanding``) and then
the live stream.  Each session is one coroutine that waits for its Subscription's wakeup,
polls, encodes and writes, awaiting ``drain()`` -- so a client that stops reading stalls only
its own coroutine: its bounded Subscription drops (and counts) messages meanwhile, and the
transport's buffer is capped by the stream's high-water mark.  Nothing a client does can
block the program: the program's thread never waits on the agent.

Frames are encoded once per message, not once per client (a small cache keyed by the
message object, which every Subscription of a Collector shares), and a session writes a
tick's frames with one ``write`` of their join: every system call this thread makes releases the GIL
and must take it back from the busy loop thread, and each such hand-off costs the loop far
more than the call itself (a thread that merely wakes 100 times a second slowed the echo
benchmark by ~2-3 %).

Which loop?  The agent follows the most recently attached Monitor (``attach``): ``loopmon
run`` attaches every instrumented loop its policy creates, so a program that calls
``asyncio.run()`` twice is followed from one loop to the next (counters restart at zero).
A collector's own "loop closed" Goodbye is therefore not forwarded; clients get ``Goodbye``
when the agent closes (program exit), then end of stream.

Traps
-----
* A garbage or hostile client: every read is bounded (``FrameDecoder`` limits), the
  handshake has a timeout, and any ``ProtocolError`` drops that one connection.
* Clean-up at exit removes the socket and the discovery file; a SIGKILLed process leaves
  them, and ``discovery.list_processes()`` prunes them later.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Optional

from ..monitor import Monitor
from . import discovery, wire
from .collector import DEFAULT_SAMPLE_PERIOD, Collector, Subscription
from .endpoints import format_tcp_endpoint, parse_listen  # noqa: F401 (re-exported)
from .messages import Goodbye, OpEvents

log = logging.getLogger("loopmon.agent")

HANDSHAKE_TIMEOUT = 5.0
WRITE_HIGH_WATER = 1 << 20


class _AgentLoop(asyncio.SelectorEventLoop):
    """The agent's plain asyncio loop, reading its self-pipe with one ``recv`` per wakeup.

    asyncio reads until ``EAGAIN``: two system calls per collector tick, each a GIL hand-off
    the monitored loop pays for (see ``Agent._pump``).  A byte left over (more than 4096
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


class Agent:
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
        elif col not in self._driven:
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

    def _on_loop(self, fn: Callable[[], None]) -> Callable[[], None]:
        """A wakeup that runs ``fn`` on the agent's loop: directly when the collector ticks
        on the agent's thread (it drives it), else through ``call_soon_threadsafe``, whose
        self-pipe write and the extra select it causes are two GIL hand-offs."""
        loop = self._loop

        def wakeup() -> None:
            if threading.get_ident() == self._loop_ident:
                fn()
            else:
                loop.call_soon_threadsafe(fn)
        return wakeup

    def _encode(self, msg: Any) -> bytes:
        key = id(msg)
        hit = self._enc_cache.get(key)
        if hit is not None and hit[0] is msg:
            return hit[1]
        data = wire.encode_frame(msg)
        self._enc_cache[key] = (msg, data)
        if len(self._enc_cache) > 512:
            self._enc_cache.popitem(last=False)
        return data

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._session_tasks.add(task)
        peer = writer.get_extra_info("peername") or "unix"
        try:
            await self._session(reader, writer, peer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except wire.ProtocolError as exc:
            self.rejected += 1
            log.warning("loopmon agent: dropped client %s: %s", peer, exc)
            await self._refuse(writer, f"protocol error: {exc}")
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # pragma: no cover - a bug; never take the agent down
            log.exception("loopmon agent: session failed: %r", exc)
        finally:
            self._session_tasks.discard(task)
            writer.transport.abort() if not writer.is_closing() else None

    async def _refuse(self, writer: asyncio.StreamWriter, message: str) -> None:
        try:
            writer.write(wire.STREAM_HEADER + wire.encode_frame(wire.ErrorFrame(message)))
            await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
        except Exception:
            writer.transport.abort()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       peer: Any) -> None:
        async def handshake() -> Any:
            await wire.read_stream_header(reader)
            return await wire.read_frame(reader, max_frame=64 << 10)

        hello = await asyncio.wait_for(handshake(), HANDSHAKE_TIMEOUT)
        if not isinstance(hello, wire.ClientHello):
            raise wire.ProtocolError(f"expected ClientHello, got {type(hello).__name__}")
        if not hmac.compare_digest(hello.token.encode("utf-8", "surrogatepass"),
                                   self.token.encode()):
            self.rejected += 1
            log.warning("loopmon agent: rejected client %s: wrong token", peer)
            await self._refuse(writer, "wrong token: read it from the discovery file "
                                       "(loopmon ps) or connect by pid")
            return
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.sessions += 1
        while self.collector is None and not self._closing:     # no loop yet: wait for one
            async with self._changed:
                await self._changed.wait()
        if self._closing:
            return
        writer.write(wire.STREAM_HEADER)
        eof = asyncio.ensure_future(self._watch_eof(reader))
        sub: Optional[Subscription] = None
        try:
            sub = self._subscribe(hello)
            writer.write(self._encode(sub.hello))
            await self._pump(sub, writer, eof, hello)
        finally:
            eof.cancel()
            if sub is not None:
                sub.close()
                self._subs.discard(sub)

    def _subscribe(self, hello: Optional[Any] = None,
                   flush: Optional[Callable[[], None]] = None) -> Subscription:
        """Subscribe to the current collector with what the client's hello asked for (no
        OpEvents at all, or a lower event budget), so the collector selects nothing it
        would only have to throw away.  The collector's wakeup runs ``flush`` on the agent's
        loop if given, else sets the subscription's ``wake_event``."""
        if hello is None:
            sub = self.collector.subscribe()
        else:
            sub = self.collector.subscribe(event_budget=hello.event_budget or None,
                                           op_events=hello.op_events)
        wake = asyncio.Event()

        sub.set_wakeup(self._on_loop(flush if flush is not None else wake.set))
        sub.wake_event = wake          # type: ignore[attr-defined]
        wake.set()                     # the backlog is already queued
        self._subs.add(sub)
        return sub

    async def _pump(self, sub: Subscription, writer: asyncio.StreamWriter,
                    eof: asyncio.Future, hello: Any) -> None:
        """Stream one subscription to one client.

        Each collector tick runs ``flush`` -- a plain callback, polled and written in the
        loop iteration that took the wakeup.  Every extra hop through a task would be
        another ``select()`` on this thread, and each system call here releases the GIL and
        must take it back from the busy monitored loop (measured with strace: a tick went
        through five ``epoll_wait`` calls when the pump was woken as a task).  This coroutine
        handles the rest: the backlog, a client over the write high-water mark (await
        ``drain``; meanwhile the bounded subscription drops and counts), a new loop to follow,
        and the Goodbye at close.
        """
        op_events = hello.op_events
        transport = writer.transport
        current = [sub]

        def flush() -> None:
            s = current[0]
            if (eof.done() or self._closing or writer.is_closing()
                    or (self.collector is not None and s._collector is not self.collector)
                    or transport.get_write_buffer_size() > WRITE_HIGH_WATER):
                s.wake_event.set()                      # type: ignore[attr-defined]
                return
            self._write_polled(s, writer, op_events)
            if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                s.wake_event.set()                      # type: ignore[attr-defined]

        sub.set_wakeup(self._on_loop(flush))
        while True:
            wake = sub.wake_event      # type: ignore[attr-defined]
            waiter = asyncio.ensure_future(wake.wait())
            await asyncio.wait({waiter, eof}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if eof.done():
                return
            wake.clear()
            if (not self._closing and self.collector is not None
                    and sub._collector is not self.collector):
                sub.close()                              # a new loop: follow it
                self._subs.discard(sub)
                sub = current[0] = self._subscribe(hello, flush)
                continue
            self._write_polled(sub, writer, op_events)
            await writer.drain()
            if self._closing and sub._collector.finished and not sub._queue:
                writer.write(self._encode(Goodbye(self._close_reason)))
                await writer.drain()
                writer.close()
                return

    def _write_polled(self, sub: Subscription, writer: asyncio.StreamWriter,
                      op_events: bool) -> None:
        frames = [self._encode(msg) for msg in sub.poll()
                  if not isinstance(msg, Goodbye)             # ours is sent at close
                  and (op_events or type(msg) is not OpEvents)]
        if frames:
            # one write per tick: a write with nothing buffered is a send() system call.
            # Not writelines(): on 3.12/3.13 the selector transport's writelines does not
            # pause the protocol at the high-water mark, so drain() never waits and a stalled
            # client's buffer grows without bound (its subscription never drops).
            writer.write(b"".join(frames))

    async def _start_recording(self) -> None:
        task = asyncio.ensure_future(self._record())
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)

    async def _record(self) -> None:
        """Like a session, with the recording file as the client (it never stalls us)."""
        rec = self._recorder
        while self.collector is None and not self._closing:
            async with self._changed:
                await self._changed.wait()
        if self._closing:
            return
        sub = self._subscribe()
        rec.write(sub.hello)
        try:
            while rec.active:
                wake = sub.wake_event      # type: ignore[attr-defined]
                await wake.wait()
                wake.clear()
                if (not self._closing and self.collector is not None
                        and sub._collector is not self.collector):
                    sub.close()
                    self._subs.discard(sub)
                    sub = self._subscribe()
                    continue
                for msg in sub.poll():
                    if isinstance(msg, Goodbye) or not rec.write_frame(self._encode(msg)):
                        continue
                rec.flush()
                if self._closing and sub._collector.finished and not sub._queue:
                    rec.close(self._close_reason)
                    return
        finally:
            sub.close()
            self._subs.discard(sub)

    async def _watch_eof(self, reader: asyncio.StreamReader) -> None:
        while True:                       # the client says nothing after its hello
            data = await reader.read(65536)
            if not data:
                return

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
