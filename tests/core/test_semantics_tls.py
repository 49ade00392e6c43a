"""TLS: direct TLS servers/connections, and loop.start_tls upgrading a plain connection on
both sides (the bpo-33694 scenario: the server pauses reading, answers "OK", upgrades; the
client's ClientHello may already sit in the transport when the upgrade starts — none of it may
be lost).  A self-signed certificate is made at test time (see conftest)."""
from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def test_tls_stream_echo(aloop, arun, server_ssl, client_ssl):
    payload = os.urandom(2 * 1024 * 1024)

    async def handler(reader, writer):
        assert writer.get_extra_info("ssl_object") is not None
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ssl)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl,
                                                       server_hostname="localhost")
        assert writer.get_extra_info("peercert")["subject"]
        assert writer.get_extra_info("cipher")
        for i in range(20):
            msg = b"tls line %d\n" % i
            writer.write(msg)
            assert await reader.readline() == msg
        h = hashlib.sha256()

        async def rx():
            n = 0
            while n < len(payload):
                d = await reader.read(1 << 16)
                assert d
                h.update(d)
                n += len(d)

        async def tx():
            writer.write(payload)
            await writer.drain()
        await asyncio.gather(rx(), tx())
        assert h.digest() == hashlib.sha256(payload).digest()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_tls_handshake_failure_with_untrusted_cert(aloop, arun, server_ssl):
    async def handler(reader, writer):
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ssl)
        port = server.sockets[0].getsockname()[1]
        strict = ssl.create_default_context()          # does not trust our self-signed cert
        with pytest.raises(ssl.SSLError):
            await asyncio.open_connection("127.0.0.1", port, ssl=strict,
                                          server_hostname="localhost")
        server.close()
        await server.wait_closed()
    arun(main())


class StartTlsServer(asyncio.Protocol):
    """Plain until "STARTTLS\\n"; then pause, answer "OK\\n", upgrade, and answer the TLS
    payload (8-byte length + bytes) with its sha256 and a 1 MiB stream of its own."""

    def __init__(self, ctx, done):
        self.ctx, self.done = ctx, done
        self.plain = b""
        self.upgrading = False
        self.tls_ready = False
        self.buf = bytearray()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if not self.upgrading:
            self.plain += data
            assert len(self.plain) <= 9, f"plain bytes after STARTTLS: {self.plain!r}"
            if self.plain == b"STARTTLS\n":
                self.upgrading = True
                self.transport.pause_reading()
                self.transport.write(b"OK\n")
                asyncio.ensure_future(self.upgrade())
            return
        self.buf += data
        self.maybe_reply()

    def maybe_reply(self):
        # App data can arrive (in the same read as the end of the handshake) before the
        # start_tls() caller resumes: self.transport is still the plain one until then.
        if not self.tls_ready or len(self.buf) < 8:
            return
        n = int.from_bytes(self.buf[:8], "big")
        if len(self.buf) == 8 + n:
            digest = hashlib.sha256(self.buf[8:]).digest()
            self.transport.write(digest + _server_stream())
            self.transport.close()

    async def upgrade(self):
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(self.transport, self, self.ctx,
                                                  server_side=True, ssl_handshake_timeout=60)
        except BaseException as exc:
            self.done.set_exception(exc)
            raise
        self.tls_ready = True
        self.maybe_reply()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


def _server_stream() -> bytes:
    return hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)


class StartTlsClient(asyncio.Protocol):
    def __init__(self, ctx, payload, done):
        self.ctx, self.payload, self.done = ctx, payload, done
        self.plain = b""
        self.upgrading = False
        self.buf = bytearray()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"STARTTLS\n")

    def data_received(self, data):
        if not self.upgrading:
            self.plain += data
            if self.plain == b"OK\n":
                self.upgrading = True
                asyncio.ensure_future(self.upgrade())
            return
        self.buf += data

    async def upgrade(self):
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(self.transport, self, self.ctx,
                                                  server_hostname="localhost",
                                                  ssl_handshake_timeout=60)
            assert self.transport.get_extra_info("ssl_object") is not None
            self.transport.write(len(self.payload).to_bytes(8, "big") + self.payload)
        except BaseException as exc:
            self.done.set_exception(exc)
            raise

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(bytes(self.buf))


@pytest.mark.parametrize("size", [1, 3 * 1024 * 1024])
def test_start_tls_both_sides(aloop, arun, server_ssl, client_ssl, size):
    payload = os.urandom(size)

    async def main():
        loop = asyncio.get_running_loop()
        server_done = loop.create_future()
        client_done = loop.create_future()
        server = await loop.create_server(lambda: StartTlsServer(server_ssl, server_done),
                                          "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await loop.create_connection(lambda: StartTlsClient(client_ssl, payload, client_done),
                                     "127.0.0.1", port)
        reply = await asyncio.wait_for(client_done, 60)
        await asyncio.wait_for(server_done, 60)
        server.close()
        await server.wait_closed()
        return reply
    reply = arun(main(), timeout=100)
    assert reply[:32] == hashlib.sha256(payload).digest(), "server saw different bytes"
    assert reply[32:] == _server_stream(), "client got different bytes"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is 3.11+")
def test_stream_writer_start_tls(aloop, arun, server_ssl, client_ssl):
    async def handler(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_ssl)
        assert writer.get_extra_info("ssl_object") is not None
        while line := await reader.readline():
            writer.write(line[::-1])
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ssl, server_hostname="localhost")
        for i in range(50):
            writer.write(b"%d\n" % i)
            assert await reader.readexactly(len(b"%d\n" % i)) == (b"%d\n" % i)[::-1]
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_sendfile_over_tls_falls_back(aloop, arun, server_ssl, client_ssl, tmp_path):
    data = os.urandom(1024 * 1024 + 7)
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        async def handler(reader, writer):
            got.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ssl)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl,
                                                       server_hostname="localhost")
        with open(path, "rb") as f:
            sent = await loop.sendfile(writer.transport, f, 7)
        assert sent == len(data) - 7
        writer.close()
        await writer.wait_closed()
        result = await asyncio.wait_for(got, 60)
        server.close()
        await server.wait_closed()
        return result
    assert arun(main()) == data[7:]


def test_tls_many_clients_with_tiny_reader_limits(aloop, arun, server_ssl, client_ssl):
    """20 TLS connections at once; the client readers use a tiny limit so the SSL layer keeps
    pausing and resuming the TCP transport (SSLProtocol is a BufferedProtocol on 3.11+)."""
    async def handler(reader, writer):
        try:
            n = int((await reader.readline()).decode())
            block = hashlib.sha256(str(n).encode()).digest() * 4096    # 128 KiB
            for _ in range(n):
                writer.write(block)
                await writer.drain()
            data = await reader.readexactly(n * 1000)
            writer.write(hashlib.sha256(data).digest())
            await writer.drain()
        finally:
            writer.close()

    async def client(i, port):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl, server_hostname="localhost", limit=512)
        n = 4 + i % 5
        writer.write(b"%d\n" % n)
        block = hashlib.sha256(str(n).encode()).digest() * 4096
        for _ in range(n):
            assert await reader.readexactly(len(block)) == block
        up = os.urandom(n * 1000)
        writer.write(up)
        assert await reader.readexactly(32) == hashlib.sha256(up).digest()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ssl)
        port = server.sockets[0].getsockname()[1]
        await asyncio.gather(*(client(i, port) for i in range(20)))
        server.close()
        await server.wait_closed()
    arun(main(), timeout=100)


def test_tls_over_unix_socket(aloop, arun, server_ssl, client_ssl, tmp_path):
    path = str(tmp_path / "tls.sock")

    async def handler(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handler, path, ssl=server_ssl)
        reader, writer = await asyncio.open_unix_connection(path, ssl=client_ssl,
                                                            server_hostname="localhost")
        writer.write(b"tls over unix\n")
        assert await reader.readline() == b"TLS OVER UNIX\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())
