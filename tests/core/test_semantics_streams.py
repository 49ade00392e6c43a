"""asyncio streams over TCP: echo, many connections, a large transfer both ways, half-close,
timeouts around reads.  Every test runs on the stdlib loop (reference) and on loopmon."""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

pytestmark = pytest.mark.timeout(120)


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
    except ConnectionError:
        writer.close()


async def _start_echo():
    server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_echo_roundtrips(aloop, arun, quiescent):
    async def main():
        server, port = await _start_echo()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.get_extra_info("peername")[1] == port
        assert writer.get_extra_info("socket") is not None
        for i in range(200):
            msg = b"ping %d\n" % i
            writer.write(msg)
            assert await reader.readexactly(len(msg)) == msg
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await quiescent()
    arun(main())


def test_many_concurrent_connections(aloop, arun, quiescent):
    n_conns, n_msgs = 100, 20

    async def client(i: int, port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = 0
        for j in range(n_msgs):
            msg = os.urandom(100 + (i * 37 + j) % 900)
            writer.write(msg)
            await writer.drain()
            assert await reader.readexactly(len(msg)) == msg
            got += len(msg)
        writer.close()
        await writer.wait_closed()
        return got

    async def main():
        server, port = await _start_echo()
        totals = await asyncio.gather(*(client(i, port) for i in range(n_conns)))
        assert all(t > 0 for t in totals)
        server.close()
        await server.wait_closed()
        await quiescent()
    arun(main())


@pytest.mark.no_bare
def test_large_transfer_both_ways_with_checksums(aloop, arun):
    """64 MiB client -> server and 64 MiB server -> client at the same time, sha256 both ways."""
    size = 64 * 1024 * 1024
    chunk = 1024 * 1024
    up = os.urandom(chunk)   # the stream is the chunk repeated with a varying counter prefix
    results: dict[str, tuple] = {}
    server_done = None

    def stream(tag: bytes):
        for i in range(size // chunk):
            yield tag + i.to_bytes(4, "big") + up[5:]

    def digest(tag: bytes) -> str:
        h = hashlib.sha256()
        for c in stream(tag):
            h.update(c)
        return h.hexdigest()

    async def sink(reader: asyncio.StreamReader) -> tuple[int, str]:
        h, n = hashlib.sha256(), 0
        while True:
            data = await reader.read(1 << 18)
            if not data:
                return n, h.hexdigest()
            h.update(data)
            n += len(data)

    async def source(writer: asyncio.StreamWriter, tag: bytes) -> None:
        for c in stream(tag):
            writer.write(c)
            await writer.drain()
        writer.write_eof()

    async def handler(reader, writer):
        (n, h), _ = await asyncio.gather(sink(reader), source(writer, b"D"))
        results["server_got"] = (n, h)
        server_done.set_result(None)
        writer.close()

    async def main():
        nonlocal server_done
        server_done = asyncio.get_running_loop().create_future()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        (n, h), _ = await asyncio.gather(sink(reader), source(writer, b"U"))
        await server_done                 # the server may still be reading our last bytes
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return n, h

    n, h = arun(main(), timeout=110)
    assert n == size
    assert h == digest(b"D"), "server -> client stream corrupted"
    assert results["server_got"] == (size, digest(b"U")), "client -> server stream corrupted"


def test_half_close_client_write_eof_then_server_replies(aloop, arun):
    """The client shuts down its sending side; the server reads to EOF, then still answers."""
    async def handler(reader, writer):
        data = await reader.read()          # until the client's EOF
        writer.write(b"got %d bytes: " % len(data) + hashlib.sha256(data).hexdigest().encode())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.can_write_eof()
        payload = os.urandom(300_000)
        writer.write(payload)
        writer.write_eof()
        reply = await reader.read()
        assert reply == b"got 300000 bytes: " + hashlib.sha256(payload).hexdigest().encode()
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_half_close_server_side_first(aloop, arun):
    """The server sends and shuts down its side; the client keeps sending after seeing EOF."""
    async def main():
        got = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            writer.write(b"hello")
            writer.write_eof()
            got.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b"hello"
        writer.write(b"after-eof" * 1000)
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(got, 30) == b"after-eof" * 1000
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_wait_for_timeout_around_read_loses_nothing(aloop, arun, quiescent):
    """A read that times out (cancelled) must not eat the bytes that come after it."""
    async def main():
        server, port = await _start_echo()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(5):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(100), 0.05)
            msg = b"message %d" % i
            writer.write(msg)
            assert await asyncio.wait_for(reader.readexactly(len(msg)), 30) == msg
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await quiescent()
    arun(main())


def test_connection_refused(aloop, arun, refused_port):
    async def main():
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", refused_port)
    arun(main())


def test_readline_readuntil_and_limits(aloop, arun):
    async def handler(reader, writer):
        writer.write(b"line one\nline two\r\nsep|" + b"x" * 200 + b"\n")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=100)
        assert await reader.readline() == b"line one\n"
        assert await reader.readuntil(b"\r\n") == b"line two\r\n"
        assert await reader.readuntil(b"|") == b"sep|"
        with pytest.raises(ValueError):          # LimitOverrunError surfaces as ValueError
            await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_monitor_sees_the_traffic(aloop, arun):
    """Guards the suite's own finaliser: on an instrumented loop the byte counters really move
    (received == delivered after close would otherwise hold trivially, as 0 == 0)."""
    monitor = getattr(aloop, "monitor", None)
    if monitor is None:
        pytest.skip("no monitor on this loop")
    payload = os.urandom(1 << 20)

    async def main():
        server, port = await _start_echo()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())
    snap = monitor.snapshot()
    assert snap.ops_submitted > 0
    assert snap.bytes_received >= 2 * len(payload)       # server side in, client side back
    assert snap.bytes_sent >= 2 * len(payload)
    assert snap.bytes_delivered >= 2 * len(payload)
