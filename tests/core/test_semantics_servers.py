"""Server objects: close with pending accepts, serve_forever / close / wait_closed,
start_serving=False, async-with, and Unix-socket servers and connections (path handling)."""
from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest
from semantics_helpers import echo_until_eof

pytestmark = pytest.mark.timeout(120)


def test_server_close_with_no_connection_ever(aloop, arun, quiescent):
    """The listening socket's accept op is in flight when the server closes."""
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        assert server.is_serving()
        for _ in range(5):
            await asyncio.sleep(0)
        server.close()
        assert not server.is_serving()
        await asyncio.wait_for(server.wait_closed(), 30)
        assert not server.sockets
        await quiescent()
    arun(main())


def test_server_close_with_connections_pending_in_backlog(aloop, arun, quiescent):
    """Clients connected at the TCP level but never accepted: closing the server resets them."""
    async def main():
        loop = asyncio.get_running_loop()
        handled = []

        async def handler(reader, writer):
            handled.append(writer)
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=50)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(10):   # blocking connects complete from the kernel's backlog, no accept yet
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            clients.append(c)
        server.close()          # no await in between: the loop had no chance to accept
        await asyncio.wait_for(server.wait_closed(), 30)
        for c in clients:
            c.settimeout(30)
            try:
                rest = await loop.run_in_executor(None, c.recv, 10)
            except ConnectionError:
                rest = b""
            assert rest == b"", "a backlog connection of a closed server received data"
            c.close()
        # a fresh connect is refused now
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await quiescent()
    arun(main())


def test_serve_forever_cancel_closes_server(aloop, arun, quiescent):
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        with pytest.raises(RuntimeError):   # serve_forever twice
            await server.serve_forever()
        writer.close()                      # 3.12+: closing waits for live connections
        await writer.wait_closed()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=30)
        assert done and task.cancelled()
        assert not server.is_serving()
        await asyncio.wait_for(server.wait_closed(), 30)
        await quiescent()
    arun(main())


def test_start_serving_false(aloop, arun):
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):     # not even listening yet
            await asyncio.open_connection("127.0.0.1", port)
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()                     # idempotent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_async_with_server_and_get_loop(aloop, arun):
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        assert server.get_loop() is asyncio.get_running_loop()
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.close()
            await writer.wait_closed()
        assert not server.is_serving()
        await server.wait_closed()
    arun(main())


def test_server_on_existing_socket_and_reuse_port(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        server = await loop.create_server(asyncio.Protocol, sock=s)
        assert server.sockets[0].getsockname()[1] == port
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        with pytest.raises(ValueError):       # host/port together with sock
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, sock=socket.socket())
    arun(main())


def test_address_in_use(aloop, arun):
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(OSError):
            await asyncio.start_server(echo_until_eof, "127.0.0.1", port, reuse_address=False)
        server.close()
        await server.wait_closed()
    arun(main())


def test_accepts_many_connections_quickly(aloop, arun, quiescent):
    async def main():
        count = 0

        async def handler(reader, writer):
            nonlocal count
            count += 1
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=200)
        port = server.sockets[0].getsockname()[1]

        async def one(i):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(i.to_bytes(4, "big"))
            assert await r.read() == i.to_bytes(4, "big")
            w.close()
            await w.wait_closed()

        await asyncio.gather(*(one(i) for i in range(200)))
        assert count == 200
        server.close()
        await server.wait_closed()
        await quiescent()
    arun(main())


# ---------------------------------------------------------------- Unix sockets

def test_unix_stream_echo(aloop, arun, tmp_path, quiescent):
    path = str(tmp_path / "echo.sock")

    async def main():
        server = await asyncio.start_unix_server(echo_until_eof, path)
        assert os.path.exists(path)
        assert server.sockets[0].family == socket.AF_UNIX
        reader, writer = await asyncio.open_unix_connection(path)
        assert writer.get_extra_info("peername") == path
        payload = os.urandom(3 * 1024 * 1024)
        writer.write(payload)
        writer.write_eof()
        got = await reader.read()
        assert got == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await quiescent()
    arun(main())


def test_unix_create_connection_protocol_and_sock(aloop, arun, tmp_path):
    path = str(tmp_path / "p.sock")

    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class Collect(asyncio.Protocol):
            def __init__(self):
                self.buf = b""

            def data_received(self, data):
                self.buf += data

            def eof_received(self):
                got.set_result(self.buf)

        server = await loop.create_unix_server(Collect, path)
        # the same server reached through an already connected socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        await loop.sock_connect(s, path)
        tr, _ = await loop.create_unix_connection(asyncio.Protocol, sock=s)
        tr.write(b"via sock")
        tr.write_eof()
        assert await asyncio.wait_for(got, 30) == b"via sock"
        tr.close()
        server.close()
        await server.wait_closed()
    arun(main())


def test_unix_server_replaces_stale_socket_file(aloop, arun, tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                         # the file stays behind, nobody listens
    assert os.path.exists(path)

    async def main():
        server = await asyncio.start_unix_server(echo_until_eof, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"fresh")
        assert await r.readexactly(5) == b"fresh"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())
    if sys.version_info >= (3, 13):
        assert not os.path.exists(path), "3.13+: server.close() removes its socket file"


def test_unix_server_refuses_to_clobber_a_regular_file(aloop, arun, tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")

    async def main():
        with pytest.raises(OSError):
            await asyncio.start_unix_server(echo_until_eof, str(path))
    arun(main())
    assert path.read_text() == "precious"


def test_unix_connection_to_missing_path(aloop, arun, tmp_path):
    async def main():
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await asyncio.open_unix_connection(str(tmp_path / "nobody-here"))
    arun(main())


def test_unix_server_start_serving_false_and_serve_forever(aloop, arun, tmp_path):
    path = str(tmp_path / "sf.sock")

    async def main():
        server = await asyncio.start_unix_server(echo_until_eof, path, start_serving=False)
        assert not server.is_serving()
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)                       # let serve_forever start serving
        assert server.is_serving()
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"hi")
        assert await r.readexactly(2) == b"hi"
        w.close()
        await w.wait_closed()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=30)
        assert done and task.cancelled()
        await asyncio.wait_for(server.wait_closed(), 30)
    arun(main())


def test_unix_paths_as_pathlike_and_abstract_namespace(aloop, arun, tmp_path):
    """os.PathLike paths are accepted; Linux abstract names (leading NUL) have no file to
    create or clean up."""
    path = tmp_path / "pathlike.sock"                 # a PosixPath, not a str
    abstract = "\0loopmon-test-%d-%d" % (os.getpid(), id(tmp_path))

    async def main():
        server = await asyncio.start_unix_server(echo_until_eof, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"pathlike")
        assert await r.readexactly(8) == b"pathlike"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        if sys.platform.startswith("linux"):
            server = await asyncio.start_unix_server(echo_until_eof, abstract)
            r, w = await asyncio.open_unix_connection(abstract)
            w.write(b"abstract")
            assert await r.readexactly(8) == b"abstract"
            w.close()
            await w.wait_closed()
            server.close()
            await server.wait_closed()
    arun(main())
