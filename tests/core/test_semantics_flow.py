"""Read flow control where a proactor keeps a receive in flight: pausing before any data,
pausing a BufferedProtocol mid-stream, EOF arriving while paused, a slow StreamReader on a
child's stdout, and a socket handed from sock_* calls to a transport."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys

import pytest
from semantics_helpers import connected_pair

pytestmark = pytest.mark.timeout(120)


class PausedFromStart(asyncio.Protocol):
    """Pauses in connection_made; records what arrives and in which order."""

    def __init__(self):
        self.paused = True
        self.events: list[str] = []
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()

    def data_received(self, data):
        assert not self.paused, "data_received while paused"
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        assert not self.paused, "eof_received while paused"
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


class BufferedPausing(asyncio.BufferedProtocol):
    """Pauses after every 64 KiB it receives; the test resumes it.  pause_reading() called in
    buffer_updated() must stop get_buffer()/buffer_updated() at once (asyncio docs: no data is
    passed to the protocol until resume_reading())."""

    def __init__(self):
        self.buf = bytearray(8192)
        self.h = hashlib.sha256()
        self.n = 0
        self.since_pause = 0
        self.paused = False
        self.pauses = 0
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        assert not self.paused, "get_buffer while paused"
        return self.buf

    def buffer_updated(self, nbytes):
        assert not self.paused, "buffer_updated while paused"
        self.h.update(self.buf[:nbytes])
        self.n += nbytes
        self.since_pause += nbytes
        if self.since_pause >= 65536:
            self.since_pause = 0
            self.paused = True
            self.pauses += 1
            self.transport.pause_reading()

    def eof_received(self):
        assert not self.paused, "eof_received while paused"
        self.eof.set_result(None)

    def connection_lost(self, exc):
        if not self.eof.done():   # e.g. the transport's fatal error after a failed assert
            self.eof.set_exception(exc or ConnectionError("closed before EOF"))


async def _sending_server(payload: bytes, close: bool = True):
    async def handler(reader, writer):
        writer.write(payload)
        await writer.drain()
        if close:
            writer.close()
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_pause_in_connection_made_then_eof_while_paused(aloop, arun, loop_kind):
    """The peer sends everything and closes while we are paused; on resume the data comes
    first, then EOF, then connection_lost — nothing lost, nothing early."""
    if loop_kind == "stdlib" and sys.version_info < (3, 11):
        pytest.skip("3.10's selector transport adds its reader after connection_made even "
                    "when the protocol paused there (fixed in 3.11)")
    payload = os.urandom(300_000)

    async def main():
        loop = asyncio.get_running_loop()
        server, port = await _sending_server(payload)
        tr, proto = await loop.create_connection(PausedFromStart, "127.0.0.1", port)
        for _ in range(30):
            await asyncio.sleep(0.005)
        assert proto.events == [] and not tr.is_reading()
        proto.paused = False
        tr.resume_reading()
        assert await asyncio.wait_for(proto.lost, 30) is None
        server.close()
        await server.wait_closed()
        return proto
    proto = arun(main())
    assert proto.events == ["data", "eof", "lost"]
    assert bytes(proto.data) == payload


def test_buffered_protocol_paused_repeatedly(aloop, arun):
    payload = os.urandom(4 * 1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        server, port = await _sending_server(payload)
        tr, proto = await loop.create_connection(BufferedPausing, "127.0.0.1", port)
        while not proto.eof.done():
            if proto.paused:
                await asyncio.sleep(0)        # a loop iteration with the receive paused
                proto.paused = False
                tr.resume_reading()
            await asyncio.sleep(0)
        proto.eof.result()                    # raises what went wrong in a callback
        tr.close()
        server.close()
        await server.wait_closed()
        return proto
    proto = arun(main())
    assert proto.n == len(payload) and proto.h.digest() == hashlib.sha256(payload).digest()
    assert proto.pauses >= 10


def test_stream_reader_small_limit_pauses_transport(aloop, arun):
    """A StreamReader with a tiny limit pauses and resumes its transport constantly."""
    payload = os.urandom(2 * 1024 * 1024)

    async def main():
        server, port = await _sending_server(payload)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
        h, n = hashlib.sha256(), 0
        while True:
            chunk = await reader.read(700)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
            if n % 50 == 0:
                await asyncio.sleep(0)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return n, h.digest()
    assert arun(main()) == (len(payload), hashlib.sha256(payload).digest())


def test_slow_reader_of_child_stdout(aloop, arun):
    """The child writes 4 MiB; we read it in small pieces through a StreamReader with a small
    limit (the pipe transport pauses and resumes); every byte arrives in order."""
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            "import sys\n"
            "for i in range(4096): sys.stdout.buffer.write(i.to_bytes(4, 'big') * 256)\n",
            stdout=asyncio.subprocess.PIPE, limit=4096)
        h, n = hashlib.sha256(), 0
        while chunk := await proc.stdout.read(1000):
            h.update(chunk)
            n += len(chunk)
        assert await proc.wait() == 0
        return n, h.digest()
    expected = b"".join(i.to_bytes(4, "big") * 256 for i in range(4096))
    assert arun(main()) == (len(expected), hashlib.sha256(expected).digest())


def test_socket_handed_from_sock_calls_to_a_transport_and_back(aloop, arun):
    """sock_* ops on a socket, then the same socket given to create_connection(sock=...):
    whatever the loop registered for the sock_* ops must not interfere with the transport."""
    async def main():
        loop = asyncio.get_running_loop()
        c, s = await connected_pair()
        # phase 1: sock_* on both ends, including a receive cancelled while pending
        pending = asyncio.ensure_future(loop.sock_recv(c, 10))
        await asyncio.sleep(0)
        pending.cancel()
        await loop.sock_sendall(s, b"phase1")
        got = b""
        while len(got) < 6:
            got += await loop.sock_recv(c, 10)
        assert got == b"phase1"
        # phase 2: the client socket becomes a transport
        received = bytearray()
        eof = loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                received.extend(data)

            def eof_received(self):
                eof.set_result(None)

        tr, _ = await loop.create_connection(P, sock=c)
        payload = os.urandom(1024 * 1024)
        send = asyncio.ensure_future(loop.sock_sendall(s, payload))
        tr.write(b"via transport")
        got = b""
        while len(got) < 13:
            got += await loop.sock_recv(s, 100)
        assert got == b"via transport"
        await send
        s.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(eof, 30)
        assert bytes(received) == payload
        tr.close()
        s.close()
    arun(main())
