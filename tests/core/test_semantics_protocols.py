"""Transport/protocol semantics: callback order, eof_received's return value, close vs abort,
pause/resume reading, write flow control (water marks, pause_writing/resume_writing, drain),
and BufferedProtocol (get_buffer/buffer_updated)."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

pytestmark = pytest.mark.timeout(120)


class Recorder(asyncio.Protocol):
    """Records every callback in order; answers eof_received with ``keep_open``."""

    def __init__(self, keep_open=False, reply_on_eof: bytes = b""):
        self.events: list[str] = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.reply_on_eof = reply_on_eof
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()
        self.lost_exc = "not called"

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def data_received(self, data):
        assert isinstance(data, (bytes, bytearray))
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        if self.reply_on_eof:
            self.transport.write(self.reply_on_eof)
            self.transport.close()
        return self.keep_open

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost_exc = exc
        if not self.lost.done():
            self.lost.set_result(exc)


async def _server(factory):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("keep_open", [False, True])
def test_callback_order_and_eof_received_return(aloop, arun, keep_open):
    """eof_received returning falsy closes the transport; returning True keeps it writable."""
    server_protos: list[Recorder] = []

    def factory():
        p = Recorder(keep_open=keep_open)
        server_protos.append(p)
        return p

    async def main():
        loop = asyncio.get_running_loop()
        server, port = await _server(factory)
        tr, client = await loop.create_connection(Recorder, "127.0.0.1", port)
        tr.write(b"hello")
        tr.write_eof()
        while not server_protos or "eof" not in server_protos[0].events:
            await asyncio.sleep(0.01)
        sp = server_protos[0]
        assert bytes(sp.data) == b"hello"
        if keep_open:
            assert not sp.transport.is_closing()
            sp.transport.write(b"reply after eof")
            sp.transport.close()
        await asyncio.wait_for(sp.lost, 30)
        await asyncio.wait_for(client.lost, 30)
        assert sp.events == ["made", "data", "eof", "lost"]
        assert sp.lost_exc is None
        assert client.events == (["made", "data", "eof", "lost"] if keep_open
                                 else ["made", "eof", "lost"])
        assert bytes(client.data) == (b"reply after eof" if keep_open else b"")
        assert client.lost_exc is None
        server.close()
        await server.wait_closed()
    arun(main())


def test_close_flushes_pending_writes(aloop, arun, quiescent):
    """transport.close() after a big write: the peer gets every byte, then EOF."""
    payload = os.urandom(8 * 1024 * 1024)
    got = []

    async def handler(reader, writer):
        got.append(await reader.read())
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(lambda: Recorder(keep_open=True), "127.0.0.1", port)
        tr.write(payload)
        tr.close()
        assert tr.is_closing()
        assert await asyncio.wait_for(proto.lost, 60) is None
        while not got:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        await quiescent()
    arun(main())
    assert hashlib.sha256(got[0]).digest() == hashlib.sha256(payload).digest()


@pytest.mark.bytes_unread("the server side is paused while the client aborts (RST): a proactor "
                          "may already hold received bytes for the paused protocol, and a reset "
                          "connection drops them by design")
def test_abort_drops_buffer_and_calls_connection_lost_once(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        server_protos: list[Recorder] = []

        def factory():
            server_protos.append(Recorder())
            return server_protos[-1]

        server, port = await _server(factory)
        tr, proto = await loop.create_connection(lambda: Recorder(), "127.0.0.1", port)
        while not server_protos:
            await asyncio.sleep(0.01)
        sp = server_protos[0]
        sp.transport.pause_reading()            # let the client's write buffer fill up
        tr.write(os.urandom(4 * 1024 * 1024))
        tr.abort()
        assert tr.is_closing()
        assert await asyncio.wait_for(proto.lost, 30) is None
        assert proto.events == ["made", "lost"]
        tr.abort()                               # idempotent
        tr.close()
        sp.transport.resume_reading()
        exc = await asyncio.wait_for(sp.lost, 30)  # the server sees a reset or an EOF
        assert exc is None or isinstance(exc, ConnectionError)
        assert sp.events[0] == "made" and sp.events[-1] == "lost"
        assert sp.events.count("lost") == 1 and proto.events.count("lost") == 1
        server.close()
        await server.wait_closed()
    arun(main())


class Pausing(asyncio.Protocol):
    """Pauses reading on the first chunk; asserts nothing arrives while paused."""

    def __init__(self):
        self.paused = False
        self.data = bytearray()
        self.first = asyncio.get_running_loop().create_future()
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        assert not self.paused, "data_received while reading is paused"
        self.data += data
        if not self.first.done():
            self.transport.pause_reading()
            self.paused = True
            self.first.set_result(None)

    def eof_received(self):
        assert not self.paused, "eof_received while reading is paused"
        self.eof.set_result(None)

    def connection_lost(self, exc):
        pass


def test_pause_resume_reading(aloop, arun, quiescent):
    payload = os.urandom(4 * 1024 * 1024)

    async def handler(reader, writer):
        writer.write(payload)
        await writer.drain()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(Pausing, "127.0.0.1", port)
        await asyncio.wait_for(proto.first, 30)
        assert not tr.is_reading()
        for _ in range(20):                  # many loop iterations with the peer still sending
            await asyncio.sleep(0.005)
        tr.pause_reading()                   # pausing twice is a no-op
        proto.paused = False
        tr.resume_reading()
        assert tr.is_reading()
        tr.resume_reading()                  # resuming twice is a no-op
        await asyncio.wait_for(proto.eof, 60)
        tr.close()
        server.close()
        await server.wait_closed()
        await quiescent()
        return bytes(proto.data)
    assert arun(main()) == payload


class FlowControlled(asyncio.Protocol):
    def __init__(self):
        self.calls: list[str] = []
        self.resumed = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        assert not self.calls or self.calls[-1] == "resume", self.calls
        self.calls.append("pause")

    def resume_writing(self):
        assert self.calls and self.calls[-1] == "pause", self.calls
        self.calls.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_write_flow_control_water_marks(aloop, arun, quiescent):
    """Writing into a peer that does not read: pause_writing above the high mark, resume_writing
    once the buffer drains below the low mark, every byte arrives."""
    chunk = os.urandom(256 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()

        async def handler(reader, writer):
            accepted.set_result((reader, writer))

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(FlowControlled, "127.0.0.1", port)
        tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        reader, writer = await accepted
        written = 0
        while "pause" not in proto.calls:
            assert written < 256 * 1024 * 1024, "pause_writing never called"
            tr.write(chunk)
            written += len(chunk)
            await asyncio.sleep(0)
        assert tr.get_write_buffer_size() > 16 * 1024
        h = hashlib.sha256()
        received = 0
        while received < written:
            data = await reader.read(1 << 20)
            assert data
            h.update(data)
            received += len(data)
        await asyncio.wait_for(proto.resumed, 30)
        assert tr.get_write_buffer_size() <= 16 * 1024
        tr.close()
        await asyncio.wait_for(proto.lost, 30)
        writer.close()
        server.close()
        await server.wait_closed()
        return received, h.hexdigest(), written

        await quiescent()
    received, digest, written = arun(main())
    assert received == written
    assert digest == hashlib.sha256(chunk * (written // len(chunk))).hexdigest()


def test_drain_waits_for_the_peer(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()
        server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)),
                                            "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(high=32 * 1024)
        sreader, swriter = await accepted
        writer.write(b"z" * (32 * 1024 * 1024))
        drain = asyncio.ensure_future(writer.drain())
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert not drain.done(), "drain() finished while 32 MiB sit unread"
        n = 0
        while n < 32 * 1024 * 1024:
            n += len(await sreader.read(1 << 20))
        await asyncio.wait_for(drain, 30)
        writer.close()
        await writer.wait_closed()
        swriter.close()
        server.close()
        await server.wait_closed()
    arun(main())


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, bufsize=1000):
        self.buf = bytearray(bufsize)
        self.h = hashlib.sha256()
        self.n = 0
        self.events: list[str] = []
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def get_buffer(self, sizehint):
        assert isinstance(sizehint, int)
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        self.h.update(self.buf[:nbytes])
        self.n += nbytes
        if self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")
        self.transport.write(b"%d %s" % (self.n, self.h.hexdigest().encode()))
        self.transport.close()   # flushes the reply, then connection_lost
        return True

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.done.done():
            self.done.set_result(exc)


@pytest.mark.parametrize("bufsize", [1, 1000, 65536])
def test_buffered_protocol_server(aloop, arun, bufsize):
    payload = os.urandom(2 * 1024 * 1024 if bufsize > 1 else 20_000)
    protos: list[Buffered] = []

    def factory():
        protos.append(Buffered(bufsize))
        return protos[-1]

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        reply = await reader.read()
        p = protos[0]
        p.transport.close()
        assert await asyncio.wait_for(p.done, 30) is None
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return reply, p.events
    reply, events = arun(main())
    assert reply == b"%d %s" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
    assert events == ["made", "data", "eof", "lost"]


def test_buffered_protocol_client(aloop, arun):
    payload = os.urandom(1024 * 1024)

    async def handler(reader, writer):
        writer.write(payload)
        writer.write_eof()
        await reader.read()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(lambda: Buffered(4096), "127.0.0.1", port)
        while "eof" not in proto.events:
            await asyncio.sleep(0.01)
        tr.close()
        await asyncio.wait_for(proto.done, 30)
        server.close()
        await server.wait_closed()
        return proto
    proto = arun(main())
    assert proto.n == len(payload) and proto.h.digest() == hashlib.sha256(payload).digest()


def test_get_extra_info(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        server, port = await _server(Recorder)
        tr, proto = await loop.create_connection(Recorder, "127.0.0.1", port)
        sock = tr.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
        assert tr.get_extra_info("no-such-key", "dflt") == "dflt"
        assert tr.get_protocol() is proto
        tr.close()
        await asyncio.wait_for(proto.lost, 30)
        server.close()
        await server.wait_closed()
    arun(main())
