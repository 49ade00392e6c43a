"""The agent's client sessions: handshake, backlog, and the live stream of one Subscription.

A connection goes: both sides send the 6-byte stream header; the client sends ``ClientHello``
with the token; a wrong token gets an ``ErrorFrame``, a log line and a close.  Otherwise the
agent sends ``Hello``, then the Subscription's backlog (``History``, ``Outstanding``) and then
the live stream.  Each session is one coroutine plus one plain callback (``flush``) that the
collector's wakeup runs after every tick that queued messages: it polls, encodes and writes.
A client that stops reading stalls only its own session: past the transport's high-water
mark the coroutine awaits ``drain()`` while its bounded Subscription drops (and counts)
messages, and the transport's buffer stays capped.  Nothing a client does can block the
program: the program's thread never waits on the agent.

The collector ticks on the agent's own thread (the agent's loop drives it, see
``Collector.drive_from``), so the wakeup calls ``flush`` directly: a drain, a tick, the
fan-out and the write to every client are one wakeup of one thread.  From any other thread
(a collector on a thread of its own) the wakeup goes through ``call_soon_threadsafe``.

Frames are encoded once per message, not once per client (a small cache keyed by the
message object, which every Subscription of a Collector shares), and a session writes a
tick's frames with one ``write`` of their join: every system call this thread makes releases
the GIL and must take it back from the busy loop thread, and each such hand-off costs the
loop far more than the call itself (a thread that merely wakes 100 times a second slowed the
echo benchmark by ~2-3 %).  Not ``writelines``: on 3.12/3.13 the selector transport's
``writelines`` never pauses the protocol at the high-water mark, so ``drain()`` would not
wait and a stalled client's buffer would grow without bound.

Traps
-----
* A garbage or hostile client: every read is bounded (``FrameDecoder`` limits), the
  handshake has a timeout, and any ``ProtocolError`` drops that one connection.
* A session follows the agent's current collector: when the program starts its next loop,
  the old Subscription is closed and a new one taken (counters restart at zero).
* ``ClientSessions`` is the session half of ``Agent`` (a mixin): it uses the agent's loop,
  token, current collector and closing state, and keeps its own sets of sessions and subs.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Optional

from . import wire
from .messages import Goodbye, OpEvents
from .subscription import Subscription

log = logging.getLogger("loopmon.agent")

HANDSHAKE_TIMEOUT = 5.0
WRITE_HIGH_WATER = 1 << 20
ENCODE_CACHE_SIZE = 512          # messages whose frames are kept (shared by all sessions)


class ClientSessions:
    """Serves each connected client (and the recording) its Subscription's stream."""

    token: str
    collector: Any
    rejected: int
    sessions: int
    _loop: Any
    _loop_ident: Optional[int]
    _closing: bool
    _close_reason: str
    _changed: Any
    _recorder: Any
    _enc_cache: OrderedDict
    _session_tasks: set
    _subs: set

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
        if len(self._enc_cache) > ENCODE_CACHE_SIZE:
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
