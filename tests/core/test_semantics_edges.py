"""Edge cases a completion-style (proactor) loop can get wrong: a buffer mutated after write(),
write after write_eof, a reset peer, IPv6 addresses, pre-connected sockets, clients that reset
before being accepted, Unix datagrams, sendfile over a Unix socket."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

LINGER_RST = struct.pack("ii", 1, 0)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Sink(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def _sink_server():
    loop = asyncio.get_running_loop()
    protos: list[Sink] = []

    def factory():
        protos.append(Sink())
        return protos[-1]
    server = await loop.create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], protos


def test_write_copies_a_mutable_buffer(aloop, arun, loop_kind):
    """write(bytearray) then mutate it at once: the peer must see the original bytes, also
    when the write cannot complete inline and stays pending (a proactor send holds a buffer).
    The proactor transports copy (``bytes(data)``), and so did selector transports up to 3.11."""
    if loop_kind == "stdlib" and sys.version_info >= (3, 12):
        pytest.skip("3.12+ selector transports queue a memoryview of the caller's buffer "
                    "(no copy); the guarantee is checked on the proactor-based loops")
    async def main():
        loop = asyncio.get_running_loop()
        server, port, protos = await _sink_server()
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        original = os.urandom(6 * 1024 * 1024)
        buf = bytearray(original)
        tr.write(buf)
        buf[:] = b"\0" * len(buf)                 # mutate right away
        small = bytearray(b"tail")
        tr.write(small)
        small[:] = b"XXXX"
        view = memoryview(bytearray(b"view-data"))
        tr.write(view)
        view[:] = b"?" * 9
        tr.close()
        while not protos:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(protos[0].lost, 60)
        server.close()
        await server.wait_closed()
        return bytes(protos[0].data), original
    got, original = arun(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(original + b"tail" + b"view-data").digest()


def test_write_argument_errors(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        server, port, protos = await _sink_server()
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(TypeError):
            tr.write("str is not bytes")
        tr.write(b"")                             # empty write is a no-op
        tr.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
        tr.write_eof()
        tr.write_eof()                            # twice is fine
        with pytest.raises(RuntimeError):
            tr.write(b"after eof")
        while not protos or not protos[0].lost.done():
            await asyncio.sleep(0.01)
        assert bytes(protos[0].data) == b"abc"
        tr.close()
        server.close()
        await server.wait_closed()
    arun(main())


def test_peer_reset_reaches_connection_lost(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        tr, proto = await loop.create_connection(Sink, *lsock.getsockname())
        conn, _ = lsock.accept()
        await asyncio.sleep(0.01)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.close()
        exc = await asyncio.wait_for(proto.lost, 30)
        assert exc is None or isinstance(exc, ConnectionResetError), repr(exc)
        lsock.close()
    arun(main())


def test_stream_reader_sees_reset(aloop, arun):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        reader, writer = await asyncio.open_connection(*lsock.getsockname())
        conn, _ = lsock.accept()
        conn.sendall(b"before reset")
        await asyncio.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.close()
        got = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(100), 30):
                got += chunk
        except ConnectionResetError:
            pass
        assert got == b"before reset"
        writer.close()
        lsock.close()
    arun(main())


def test_writes_to_reset_peer_end_in_connection_lost(aloop, arun, quiescent):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        tr, proto = await loop.create_connection(Sink, *lsock.getsockname())
        conn, _ = lsock.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.close()
        for _ in range(2000):
            if proto.lost.done():
                break
            tr.write(b"w" * 65536)
            await asyncio.sleep(0.001)
        exc = await asyncio.wait_for(proto.lost, 30)
        assert exc is None or isinstance(exc, (ConnectionError, OSError)), repr(exc)
        assert tr.is_closing()
        lsock.close()
        await quiescent()
    arun(main())


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_tcp_and_udp(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()

        async def echo(reader, writer):
            writer.write(await reader.read(100))
            writer.close()

        server = await asyncio.start_server(echo, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("::1", port)
        assert writer.get_extra_info("peername")[:2] == ("::1", port)
        writer.write(b"six")
        assert await reader.read() == b"six"
        writer.close()
        server.close()
        await server.wait_closed()

        got = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.set_result((data, addr))

        a, _ = await loop.create_datagram_endpoint(P, local_addr=("::1", 0))
        b, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                   local_addr=("::1", 0))
        b.sendto(b"v6 datagram", a.get_extra_info("sockname"))
        data, addr = await asyncio.wait_for(got, 30)
        assert data == b"v6 datagram" and addr[:2] == b.get_extra_info("sockname")[:2]
        a.close()
        b.close()

        s = socket.socket(socket.AF_INET6)
        s.setblocking(False)
        lsock = socket.socket(socket.AF_INET6)
        lsock.bind(("::1", 0))
        lsock.listen(1)
        lsock.setblocking(False)
        acc = asyncio.ensure_future(loop.sock_accept(lsock))
        await loop.sock_connect(s, lsock.getsockname()[:2])
        conn, caddr = await acc
        assert caddr[:2] == s.getsockname()[:2]
        for x in (s, conn, lsock):
            x.close()
    arun(main())


def test_sock_connect_resolves_localhost(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.setblocking(False)
        s = socket.socket()
        s.setblocking(False)
        acc = asyncio.ensure_future(loop.sock_accept(lsock))
        await loop.sock_connect(s, ("localhost", lsock.getsockname()[1]))
        conn, _ = await acc
        for x in (s, conn, lsock):
            x.close()
    arun(main())


def test_create_connection_with_sock_and_connect_accepted_socket(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        c = socket.create_connection(lsock.getsockname())
        s, _ = lsock.accept()
        c.setblocking(False)
        s.setblocking(False)
        ctr, cproto = await loop.create_connection(Sink, sock=c)
        str_, sproto = await loop.connect_accepted_socket(Sink, s)
        ctr.write(b"client->server")
        str_.write(b"server->client")
        ctr.write_eof()
        str_.write_eof()
        await asyncio.wait_for(cproto.lost, 30)
        await asyncio.wait_for(sproto.lost, 30)
        assert bytes(sproto.data) == b"client->server"
        assert bytes(cproto.data) == b"server->client"
        lsock.close()
    arun(main())


def test_server_survives_clients_that_reset_before_accept(aloop, arun, quiescent):
    """Connections reset while still in the backlog must not kill the accept loop."""
    async def main():
        served = []

        async def handler(reader, writer):
            try:
                data = await reader.read(100)
                if data:
                    writer.write(data)
                    await writer.drain()
                    served.append(data)
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=100)
        port = server.sockets[0].getsockname()[1]
        for _ in range(30):
            c = socket.create_connection(("127.0.0.1", port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            c.close()
        for i in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"alive %d" % i)
            assert await asyncio.wait_for(reader.read(), 30) == b"alive %d" % i
            writer.close()
            await writer.wait_closed()
        assert server.is_serving()
        server.close()
        await server.wait_closed()
        await quiescent()
    arun(main())


def test_unix_datagram_endpoint(aloop, arun, tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        got = asyncio.Queue()

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.put_nowait((data, addr))

        a_path, b_path = str(tmp_path / "a.dgram"), str(tmp_path / "b.dgram")
        a, _ = await loop.create_datagram_endpoint(P, local_addr=a_path, family=socket.AF_UNIX)
        b, _ = await loop.create_datagram_endpoint(P, local_addr=b_path, remote_addr=a_path,
                                                   family=socket.AF_UNIX)
        for i in range(20):
            b.sendto(b"unix dgram %d" % i)
            data, addr = await asyncio.wait_for(got.get(), 30)
            assert data == b"unix dgram %d" % i and addr == b_path
        a.close()
        b.close()
    arun(main())


def test_sendfile_over_unix_socket(aloop, arun, tmp_path):
    data = os.urandom(2 * 1024 * 1024 + 3)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    sock_path = str(tmp_path / "sf.sock")

    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        async def handler(reader, writer):
            got.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_unix_server(handler, sock_path)
        tr, _ = await loop.create_unix_connection(asyncio.Protocol, sock_path)
        with open(path, "rb") as f:
            assert await loop.sendfile(tr, f, 3, 1_000_000) == 1_000_000
        tr.close()
        result = await asyncio.wait_for(got, 60)
        server.close()
        await server.wait_closed()
        return result
    assert arun(main()) == data[3:1_000_003]


def test_subprocess_large_output_and_stderr_to_stdout(aloop, arun):
    import sys

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            "import sys, os\n"
            "sys.stderr.write('E' * 1000); sys.stderr.flush()\n"
            "b = b'0123456789abcdef' * 65536\n"
            "for _ in range(20): sys.stdout.buffer.write(b)\n",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, err = await proc.communicate()
        assert err is None and proc.returncode == 0
        return out
    out = arun(main())
    assert out.count(b"E") == 1000
    assert len(out) == 1000 + 20 * 16 * 65536
