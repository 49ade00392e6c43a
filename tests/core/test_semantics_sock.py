"""The loop's ``sock_*`` methods: data paths, errors, and cancellation of in-flight ops.

The cancellation tests are the bpo-33694 shape: a receive is pending, bytes arrive in the
kernel, and the receive is cancelled *before the loop runs again*.  asyncio's contract is that a
cancelled ``sock_recv`` consumed nothing: the next receive gets every byte.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import sys

import pytest
from semantics_helpers import connected_pair, listener, udp_pair

pytestmark = pytest.mark.timeout(120)

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11),
                               reason="sock_recvfrom/sock_recvfrom_into/sock_sendto are 3.11+")


def test_connect_accept_sendall_recv(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        assert conn.getblocking() is False, "sock_accept must return a non-blocking socket"
        await loop.sock_sendall(client, b"hello ")
        await loop.sock_sendall(client, memoryview(b"world"))
        got = b""
        while len(got) < 11:
            got += await loop.sock_recv(conn, 100)
        assert got == b"hello world"
        client.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(conn, 100) == b""      # EOF
        client.close()
        conn.close()
    arun(main())


def test_sock_recv_into(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        payload = os.urandom(100_000)
        send = asyncio.ensure_future(loop.sock_sendall(client, payload))
        buf = bytearray(7000)
        out = bytearray()
        while len(out) < len(payload):
            n = await loop.sock_recv_into(conn, buf)
            assert 0 < n <= len(buf)
            out += buf[:n]
        mv = memoryview(bytearray(10))
        await loop.sock_sendall(client, b"0123456789")
        n = await loop.sock_recv_into(conn, mv[3:])
        assert bytes(mv[3:3 + n]) == b"0123456789"[:n]
        rest = b"0123456789"[n:]
        while rest:
            chunk = await loop.sock_recv(conn, 100)
            assert rest.startswith(chunk)
            rest = rest[len(chunk):]
        await send
        assert bytes(out) == payload
        client.close()
        conn.close()
    arun(main())


@pytest.mark.no_bare
def test_sock_sendall_large_both_ways(aloop, arun):
    size = 16 * 1024 * 1024

    async def pump(loop, src, dst, payload):
        async def rx():
            h, n = hashlib.sha256(), 0
            buf = bytearray(1 << 17)
            while n < len(payload):
                k = await loop.sock_recv_into(dst, buf)
                assert k
                h.update(buf[:k])
                n += k
            return h.hexdigest()
        digest, _ = await asyncio.gather(rx(), loop.sock_sendall(src, payload))
        return digest

    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        a, b = os.urandom(size), os.urandom(size)
        da, db = await asyncio.gather(pump(loop, client, conn, a), pump(loop, conn, client, b))
        assert da == hashlib.sha256(a).hexdigest()
        assert db == hashlib.sha256(b).hexdigest()
        client.close()
        conn.close()
    arun(main())


def test_sock_connect_refused(aloop, arun, refused_port):
    async def main():
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(s, ("127.0.0.1", refused_port))
        s.close()
    arun(main())


def test_sock_ops_on_closed_socket_raise_oserror(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        conn.close()
        with pytest.raises(OSError):
            await loop.sock_recv(conn, 10)
        with pytest.raises(OSError):
            await loop.sock_recv_into(conn, bytearray(10))
        with pytest.raises(OSError):
            await loop.sock_sendall(conn, b"x")
        lsock = listener()
        lsock.close()
        with pytest.raises(OSError):
            await loop.sock_accept(lsock)
        client.close()
    arun(main())


def test_sock_sendall_to_reset_peer_raises(aloop, arun, quiescent):
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()                                    # RST
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(1000):
                await loop.sock_sendall(client, b"x" * 65536)
        client.close()
        await quiescent()
    arun(main())


def test_sock_recv_sees_reset(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        recv = asyncio.ensure_future(loop.sock_recv(client, 100))
        await asyncio.sleep(0.01)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
        try:
            data = await recv
        except ConnectionResetError:
            data = b""
        assert data == b""
        client.close()
    arun(main())


def test_blocking_socket_rejected_in_debug_mode(aloop, arun):
    """asyncio's selector loop raises ValueError for a blocking socket in debug mode.  A
    selector-emulated proactor that 'tries the syscall first' would otherwise block the loop."""
    aloop.set_debug(True)

    async def main():
        loop = asyncio.get_running_loop()
        lsock = listener()
        s = socket.socket()            # blocking
        with pytest.raises(ValueError):
            await loop.sock_connect(s, lsock.getsockname())
        lsock.setblocking(True)
        with pytest.raises(ValueError):
            await loop.sock_accept(lsock)
        a, b = socket.socketpair()     # blocking pair
        with pytest.raises(ValueError):
            await loop.sock_recv(a, 10)
        with pytest.raises(ValueError):
            await loop.sock_recv_into(a, bytearray(10))
        with pytest.raises(ValueError):
            await loop.sock_sendall(a, b"x")
        for x in (a, b, s, lsock):
            x.close()
    arun(main())
    aloop.set_debug(False)


def test_ssl_socket_rejected(aloop, arun):
    """sock_* methods refuse an ssl.SSLSocket with TypeError (asyncio's _check_ssl_socket)."""
    async def main():
        loop = asyncio.get_running_loop()
        raw = socket.socket()
        raw.setblocking(False)
        ctx = ssl.create_default_context()
        s = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        for call in (lambda: loop.sock_recv(s, 1), lambda: loop.sock_sendall(s, b"x"),
                     lambda: loop.sock_recv_into(s, bytearray(1)),
                     lambda: loop.sock_connect(s, ("127.0.0.1", 9)),
                     lambda: loop.sock_accept(s)):
            with pytest.raises(TypeError):
                await call()
        s.close()
    arun(main())


def test_cancel_pending_sock_recv_loses_no_data(aloop, arun, quiescent):
    """Cancel a pending sock_recv right after the peer's bytes hit the kernel: nothing lost."""
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        for i in range(30):
            recv = asyncio.ensure_future(loop.sock_recv(conn, 4096))
            for _ in range(3):
                await asyncio.sleep(0)                      # the recv is now in flight
            assert not recv.done()
            msg = b"msg-%04d;" % i
            client.send(msg)                                # in the kernel now
            recv.cancel()                                   # before the loop runs again
            with pytest.raises(asyncio.CancelledError):
                await recv
            got = b""
            while len(got) < len(msg):
                got += await asyncio.wait_for(loop.sock_recv(conn, 4096), 30)
            assert got == msg, "bytes lost or reordered by a cancelled sock_recv"
        client.close()
        conn.close()
        await quiescent()
    arun(main())


def test_cancel_pending_sock_recv_into_loses_no_data(aloop, arun, quiescent):
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        buf = bytearray(64)
        recv = asyncio.ensure_future(loop.sock_recv_into(conn, buf))
        await asyncio.sleep(0.01)
        client.send(b"precious bytes")
        recv.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recv
        after_cancel = bytes(buf)
        got = b""
        buf2 = bytearray(64)
        while len(got) < 14:
            n = await asyncio.wait_for(loop.sock_recv_into(conn, buf2), 30)
            got += bytes(buf2[:n])
        assert got == b"precious bytes", "bytes lost by a cancelled sock_recv_into"
        # the caller may reuse its buffer once the op is cancelled: nothing may write into it
        assert after_cancel == bytes(64), "a cancelled sock_recv_into wrote into the caller's buffer"
        client.close()
        conn.close()
        await quiescent()
    arun(main())


def test_timeout_around_sock_recv_then_socket_still_usable(aloop, arun, quiescent):
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        for i in range(5):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(conn, 100), 0.02)
            await loop.sock_sendall(client, b"after timeout %d" % i)
            want = b"after timeout %d" % i
            got = b""
            while len(got) < len(want):
                got += await asyncio.wait_for(loop.sock_recv(conn, 100), 30)
            assert got == want
        client.close()
        conn.close()
        await quiescent()
    arun(main())


def test_cancel_pending_sock_accept_then_accept_again(aloop, arun, quiescent):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = listener()
        acc = asyncio.ensure_future(loop.sock_accept(lsock))
        await asyncio.sleep(0.01)
        assert not acc.done()
        acc.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acc
        # a connection made right after the cancel must not be swallowed by the cancelled accept
        c = socket.create_connection(lsock.getsockname(), timeout=30)
        acc2 = asyncio.ensure_future(loop.sock_accept(lsock))
        acc2_cancelled_race = asyncio.ensure_future(loop.sock_accept(lsock))
        acc2_cancelled_race.cancel()
        conn, addr = await asyncio.wait_for(acc2, 30)
        assert addr == c.getsockname()
        c.sendall(b"still here")
        got = b""
        while len(got) < 10:
            got += await asyncio.wait_for(loop.sock_recv(conn, 100), 30)
        assert got == b"still here"
        for s in (c, conn, lsock):
            s.close()
        await quiescent()
    arun(main())


def test_cancel_sock_accept_with_connection_in_backlog(aloop, arun, quiescent):
    """The connection is in the backlog when the pending accept is cancelled: the next
    sock_accept gets it (the cancelled one accepted nothing, or the loop handed it on)."""
    async def main():
        loop = asyncio.get_running_loop()
        lsock = listener()
        acc = asyncio.ensure_future(loop.sock_accept(lsock))
        await asyncio.sleep(0.01)
        c = socket.create_connection(lsock.getsockname(), timeout=30)
        acc.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acc
        conn, addr = await asyncio.wait_for(loop.sock_accept(lsock), 30)
        assert addr == c.getsockname()
        for s in (c, conn, lsock):
            s.close()
        await quiescent()
    arun(main())


def test_cancel_pending_sock_sendall_releases_everything(aloop, arun, quiescent):
    """A sendall stuck on a peer that does not read, cancelled: the loop must drop the op and
    its buffer (checked by the monitor finaliser) and stay usable."""
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        send = asyncio.ensure_future(loop.sock_sendall(client, b"y" * (64 * 1024 * 1024)))
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not send.done()
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send
        client.close()
        # the other side still reads what made it through, then EOF
        n = 0
        while True:
            data = await asyncio.wait_for(loop.sock_recv(conn, 1 << 20), 30)
            if not data:
                break
            n += len(data)
        assert 0 < n < 64 * 1024 * 1024
        conn.close()
        await quiescent()
    arun(main())


# ---------------------------------------------------------------- datagram sock_* (3.11+)

@needs_311
def test_sock_sendto_recvfrom(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = udp_pair()
        recv = asyncio.ensure_future(loop.sock_recvfrom(b, 2048))
        await asyncio.sleep(0.01)
        assert not recv.done()
        n = await loop.sock_sendto(a, b"datagram one", b.getsockname())
        assert n == 12
        data, addr = await asyncio.wait_for(recv, 30)
        assert (data, addr) == (b"datagram one", a.getsockname())
        await loop.sock_sendto(a, b"0123456789", b.getsockname())
        buf = bytearray(100)
        nbytes, addr = await asyncio.wait_for(loop.sock_recvfrom_into(b, buf, 4), 30)
        assert (nbytes, bytes(buf[:4]), addr) == (4, b"0123", a.getsockname())  # truncated
        await loop.sock_sendto(a, b"abc", b.getsockname())
        nbytes, _ = await asyncio.wait_for(loop.sock_recvfrom_into(b, buf), 30)
        assert bytes(buf[:nbytes]) == b"abc"
        a.close()
        b.close()
    arun(main())


@needs_311
def test_cancel_pending_sock_recvfrom_loses_no_datagram(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = udp_pair()
        for i in range(10):
            recv = asyncio.ensure_future(loop.sock_recvfrom(b, 2048))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            a.sendto(b"d%d" % i, b.getsockname())
            recv.cancel()
            with pytest.raises(asyncio.CancelledError):
                await recv
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(b, 2048), 30)
            assert data == b"d%d" % i
        a.close()
        b.close()
    arun(main())


def test_zero_length_sock_operations(aloop, arun):
    """Empty sends complete at once; an empty receive buffer returns 0 without waiting."""
    async def main():
        loop = asyncio.get_running_loop()
        client, conn = await connected_pair()
        assert await asyncio.wait_for(loop.sock_sendall(client, b""), 10) is None
        assert await asyncio.wait_for(loop.sock_sendall(client, memoryview(b"")), 10) is None
        assert await asyncio.wait_for(loop.sock_recv_into(conn, bytearray(0)), 10) == 0
        await loop.sock_sendall(client, b"after empties")
        got = b""
        while len(got) < 13:
            got += await asyncio.wait_for(loop.sock_recv(conn, 100), 10)
        assert got == b"after empties"
        client.close()
        conn.close()
    arun(main())


def test_sock_connect_and_stream_calls_on_udp_sockets(aloop, arun):
    """sock_connect on a datagram socket; then sock_sendall/sock_recv act per datagram."""
    async def main():
        loop = asyncio.get_running_loop()
        a, b = udp_pair()
        await asyncio.wait_for(loop.sock_connect(a, b.getsockname()), 10)
        await asyncio.wait_for(loop.sock_connect(b, a.getsockname()), 10)
        await loop.sock_sendall(a, b"one")
        await loop.sock_sendall(a, b"two")
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 10) == b"one"
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 10) == b"two"
        a.close()
        b.close()
    arun(main())


@needs_311
def test_empty_datagram_via_sock_sendto(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = udp_pair()
        assert await loop.sock_sendto(a, b"", b.getsockname()) == 0
        await loop.sock_sendto(a, b"next", b.getsockname())
        assert await asyncio.wait_for(loop.sock_recvfrom(b, 100), 10) == (b"", a.getsockname())
        assert await asyncio.wait_for(loop.sock_recvfrom(b, 100), 10) == (b"next", a.getsockname())
        a.close()
        b.close()
    arun(main())
