"""The asyncio client: connect to an instrumented process and iterate over its messages.

::

    client = await loopmon.client.connect(pid)          # or "unix:/path", "127.0.0.1:7000"
    print(client.hello.argv)
    async for msg in client:                            # History, Outstanding, Sample, ...
        ...
    await client.close()

Only ``asyncio.open_connection`` / ``open_unix_connection`` and stream reads are used -- no
threads, no loop-specific calls -- so the same code runs on plain asyncio, on loopmon's own
loop and inside qasync (the Qt app).

Targets: an ``int`` pid (or a string of digits) is looked up in the discovery files, which
also give the token; ``unix:/path`` or a path containing ``/`` is a Unix socket;
``host:port`` / ``[::1]:port`` is TCP.  For a socket address without ``token=``, the token is
looked up in discovery by endpoint (a process of the same user); failing that the agent
rejects the connection with a clear message.

End of stream: iteration stops cleanly when the target says ``Goodbye`` and closes, or
when the connection just ends (the target was killed): ``client.end_reason`` says which.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Optional, Union

from .telemetry import discovery, wire
from .telemetry.messages import Goodbye, Hello

__all__ = ["connect", "Client", "ConnectError", "parse_target"]


class ConnectError(Exception):
    """Could not connect to (or handshake with) a target.  ``str()`` is a one-line message."""


def parse_target(target: Union[int, str]) -> tuple[str, Any]:
    """-> ("pid", int) | ("unix", path) | ("tcp", (host, port)).  Raises ConnectError."""
    if isinstance(target, bool):
        raise ConnectError(f"bad target {target!r}")
    if isinstance(target, int):
        return "pid", target
    if not isinstance(target, (str, os.PathLike)):
        raise ConnectError(f"bad target {target!r}: expected a pid, a socket path or host:port")
    t = os.fspath(target).strip()
    if t.isdigit():
        return "pid", int(t)
    if t.startswith("unix:"):
        return "unix", t[5:]
    if "/" in t or t.endswith(".sock"):
        return "unix", t
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_s = t.rpartition(":")
    if not sep or not host or not port_s.isdigit() or int(port_s) > 65535:
        raise ConnectError(f"bad target {t!r}: expected a pid, unix:/path or host:port")
    return "tcp", (host, int(port_s))


class Client:
    """One connection to an agent.  Create with ``await connect(...)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 hello: Hello, endpoint: str) -> None:
        self._reader = reader
        self._writer = writer
        self.hello = hello
        self.endpoint = endpoint
        self.end_reason: Optional[str] = None      # set when the stream ends
        self.messages_received = 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            msg = await self.receive()
            if msg is None:
                return
            yield msg

    async def receive(self) -> Optional[Any]:
        """The next message, or None at end of stream.  Raises wire.ProtocolError on garbage."""
        if self.end_reason is not None:
            return None
        try:
            msg = await wire.read_frame(self._reader)
        except (ConnectionError, OSError) as exc:
            self.end_reason = f"connection lost: {exc}"
            return None
        except wire.ProtocolError as exc:
            if "ended inside" in str(exc):          # target died mid-frame: still an end
                self.end_reason = "connection lost mid-frame"
                return None
            self.end_reason = f"protocol error: {exc}"
            raise
        if msg is None:
            self.end_reason = self.end_reason or "end of stream"
            return None
        if isinstance(msg, wire.ErrorFrame):
            self.end_reason = f"error from target: {msg.message}"
            return None
        if isinstance(msg, Goodbye):
            self.end_reason = f"goodbye: {msg.reason}"
            self.messages_received += 1
            return msg
        self.messages_received += 1
        return msg

    async def close(self) -> None:
        if self.end_reason is None:
            self.end_reason = "closed by client"
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except Exception:
            pass

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def connect(target: Union[int, str], *, token: Optional[str] = None,
                  timeout: float = 5.0, client_name: str = "loopmon.client",
                  op_events: bool = True, event_budget: int = 0) -> Client:
    """Connect to an instrumented process and complete the handshake (see the module doc).

    ``op_events=False`` asks the agent not to stream ``OpEvents`` (a dashboard that only
    graphs Samples spares the monitored process the encoding).  ``event_budget`` (op events/s)
    asks for fewer events than the agent's own budget; it can never raise it."""
    if event_budget < 0:
        raise ValueError("event_budget must be >= 0 (0: the agent's budget)")
    kind, where = parse_target(target)
    entry = None
    if kind == "pid":
        entry = discovery.find(where)
        if entry is None:
            raise ConnectError(f"no live loopmon process with pid {where} "
                               f"(not started with `loopmon run`, or already exited)")
        kind, where = parse_target(entry.endpoint)
    if kind == "unix":
        endpoint = "unix:" + os.path.abspath(where)
    else:
        endpoint = f"[{where[0]}]:{where[1]}" if ":" in where[0] else f"{where[0]}:{where[1]}"
    if token is None:
        if entry is None:
            entry = discovery.find_endpoint(endpoint)
        token = entry.token if entry is not None else ""
    try:
        if kind == "unix":
            fut = asyncio.open_unix_connection(where, limit=1 << 20)
        else:
            fut = asyncio.open_connection(where[0], where[1], limit=1 << 20)
        reader, writer = await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise ConnectError(f"timed out connecting to {endpoint}") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectError(f"cannot connect to {endpoint}: {reason}") from None
    try:
        hello = wire.ClientHello(token, client_name, op_events, int(event_budget))
        writer.write(wire.STREAM_HEADER + wire.encode_frame(hello))

        async def handshake() -> Any:
            await wire.read_stream_header(reader)
            return await wire.read_frame(reader)
        first = await asyncio.wait_for(handshake(), timeout)
    except asyncio.TimeoutError:
        writer.close()
        raise ConnectError(f"{endpoint} did not answer the loopmon handshake "
                           f"within {timeout:g} s") from None
    except wire.ProtocolError as exc:
        writer.close()
        raise ConnectError(f"{endpoint} is not a compatible loopmon agent: {exc}") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        writer.close()
        raise ConnectError(f"{endpoint} closed the connection during the handshake: "
                           f"{exc}") from None
    if first is None:
        writer.close()
        raise ConnectError(f"{endpoint} closed the connection during the handshake")
    if isinstance(first, wire.ErrorFrame):
        writer.close()
        raise ConnectError(f"{endpoint} refused the connection: {first.message}")
    if not isinstance(first, Hello):
        writer.close()
        raise ConnectError(f"{endpoint} sent {type(first).__name__} instead of Hello")
    return Client(reader, writer, first, endpoint)
