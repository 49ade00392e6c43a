"""loop.sendfile over a transport and loop.sock_sendfile over a socket: whole files, offset/count
slices, the file position afterwards, ordering with transport writes, fallback, bad arguments."""
from __future__ import annotations

import asyncio
import io
import os
import socket

import pytest
from semantics_helpers import connected_pair

pytestmark = pytest.mark.timeout(120)

FILE_SIZE = 5 * 1024 * 1024 + 123


@pytest.fixture(scope="module")
def blob_file(tmp_path_factory) -> tuple[str, bytes]:
    data = os.urandom(FILE_SIZE)
    path = tmp_path_factory.mktemp("sendfile") / "blob.bin"
    path.write_bytes(data)
    return str(path), data


async def _collecting_server():
    """A server that collects everything each connection sends until EOF."""
    loop = asyncio.get_running_loop()
    received: asyncio.Queue = asyncio.Queue()

    async def handler(reader, writer):
        await received.put(await reader.read())
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


@pytest.mark.parametrize("offset,count", [(0, None), (1000, 100_000), (4096, None),
                                         (FILE_SIZE - 10, 1000), (0, 1)])
def test_loop_sendfile_over_transport(aloop, arun, blob_file, offset, count):
    path, data = blob_file

    async def main():
        loop = asyncio.get_running_loop()
        server, port, received = await _collecting_server()
        tr, proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with open(path, "rb") as f:
            tr.write(b"HEADER")
            sent = await loop.sendfile(tr, f, offset, count)
            expect = data[offset:offset + count] if count else data[offset:]
            assert sent == len(expect)
            assert f.tell() == offset + sent, "file position must follow the bytes sent"
        tr.write(b"TRAILER")
        tr.close()
        got = await asyncio.wait_for(received.get(), 60)
        server.close()
        await server.wait_closed()
        return got, expect
    got, expect = arun(main())
    assert len(got) == len(expect) + 13
    assert got == b"HEADER" + expect + b"TRAILER"


def test_loop_sendfile_fallback_for_non_regular_file(aloop, arun):
    payload = os.urandom(300_000)

    async def main():
        loop = asyncio.get_running_loop()
        server, port, received = await _collecting_server()
        tr, proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sendfile(tr, io.BytesIO(payload), fallback=False)
        sent = await loop.sendfile(tr, io.BytesIO(payload), 10, fallback=True)
        assert sent == len(payload) - 10
        tr.close()
        got = await asyncio.wait_for(received.get(), 60)
        server.close()
        await server.wait_closed()
        return got
    assert arun(main()) == payload[10:]


def test_loop_sendfile_on_closing_transport(aloop, arun, blob_file):
    async def main():
        loop = asyncio.get_running_loop()
        server, port, received = await _collecting_server()
        tr, proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        tr.close()
        with open(blob_file[0], "rb") as f:
            with pytest.raises(RuntimeError):
                await loop.sendfile(tr, f)
        assert await asyncio.wait_for(received.get(), 60) == b""
        server.close()
        await server.wait_closed()
    arun(main())


async def _recv_all(loop, sock):
    out = bytearray()
    while True:
        data = await loop.sock_recv(sock, 1 << 20)
        if not data:
            return bytes(out)
        out += data


@pytest.mark.parametrize("offset,count", [(0, None), (777, 2_000_000), (FILE_SIZE - 5, None)])
def test_sock_sendfile(aloop, arun, blob_file, offset, count):
    path, data = blob_file

    async def main():
        loop = asyncio.get_running_loop()
        c, conn = await connected_pair()
        rx = asyncio.ensure_future(_recv_all(loop, conn))
        with open(path, "rb") as f:
            sent = await loop.sock_sendfile(c, f, offset, count)
            assert f.tell() == offset + sent
        c.shutdown(socket.SHUT_WR)
        got = await asyncio.wait_for(rx, 60)
        c.close()
        conn.close()
        return sent, got
    sent, got = arun(main())
    expect = data[offset:offset + count] if count else data[offset:]
    assert sent == len(expect) and got == expect


def test_sock_sendfile_bad_arguments(aloop, arun, blob_file, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("text mode")

    async def main():
        loop = asyncio.get_running_loop()
        c, conn = await connected_pair()
        with open(blob_file[0], "rb") as f:
            with pytest.raises(ValueError):
                await loop.sock_sendfile(c, f, -1)
            with pytest.raises(ValueError):
                await loop.sock_sendfile(c, f, 0, 0)
            with pytest.raises(TypeError):
                await loop.sock_sendfile(c, f, 0, "10")
            with pytest.raises(TypeError):
                await loop.sock_sendfile(c, f, "0")
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.setblocking(False)
            with pytest.raises(ValueError):
                await loop.sock_sendfile(udp, f)
            udp.close()
        with open(text, "r") as tf:
            with pytest.raises(ValueError):
                await loop.sock_sendfile(c, tf)
        c.close()
        conn.close()
    arun(main())


def test_sock_sendfile_to_reset_peer(aloop, arun, blob_file):
    async def main():
        loop = asyncio.get_running_loop()
        c, conn = await connected_pair()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
        with open(blob_file[0], "rb") as f:
            with pytest.raises((ConnectionError, OSError)):
                for _ in range(50):
                    await loop.sock_sendfile(c, f, 0)
        c.close()
    arun(main())


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[str, bytes]:
    data = os.urandom(48 * 1024 * 1024)
    path = tmp_path_factory.mktemp("sendfile_big") / "big.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.mark.parametrize("api", ["loop.sendfile", "sock_sendfile"])
def test_cancelled_sendfile_sends_a_clean_prefix(aloop, arun, big_file, api, quiescent):
    """Cancel a sendfile stuck on a peer that does not read: the peer then receives a prefix
    of file[offset:] — contiguous, in order, no stray bytes — and the loop stays usable.
    (asyncio documents file.tell() as the count sent, but the stdlib selector loop leaves the
    position untouched on cancellation, so the position itself is not asserted.)"""
    path, data = big_file
    offset = 1000

    async def main():
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()
        server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)),
                                            "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if api == "loop.sendfile":
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            raw = None
        else:
            raw = socket.socket()
            raw.setblocking(False)
            await loop.sock_connect(raw, ("127.0.0.1", port))
        sreader, swriter = await accepted
        swriter.transport.pause_reading()           # the peer does not read for now
        with open(path, "rb") as f:
            if api == "loop.sendfile":
                job = asyncio.ensure_future(loop.sendfile(tr, f, offset))
            else:
                job = asyncio.ensure_future(loop.sock_sendfile(raw, f, offset))
            for _ in range(30):
                await asyncio.sleep(0.005)
            assert not job.done(), "48 MiB fitted into socket buffers?"
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
        if raw is None:
            assert not tr.is_closing()
            tr.write(b"")                            # the transport still accepts writes
            tr.close()
        else:
            raw.close()
        swriter.transport.resume_reading()
        got = await asyncio.wait_for(sreader.read(), 60)
        swriter.close()
        server.close()
        await server.wait_closed()
        await quiescent()
        return got
    got = arun(main())
    assert 0 < len(got) < len(data) - offset
    assert got == data[offset:offset + len(got)], "not a clean prefix of the file"
