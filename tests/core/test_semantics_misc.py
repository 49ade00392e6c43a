"""Odds and ends of documented behaviour: existing connections outlive server.close(),
close_clients/abort_clients (3.13+), happy eyeballs with a refused address, local_addr,
writing into a child that exited, a raising signal handler, and a debug-mode workload that
must not produce a single exception-handler call."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import pytest
from semantics_helpers import echo_until_eof

pytestmark = pytest.mark.timeout(120)


def test_connections_outlive_server_close(aloop, arun):
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        server.close()
        assert not server.is_serving()
        writer.write(b"after close")       # the accepted connection is not closed by close()
        assert await asyncio.wait_for(reader.readexactly(11), 30) == b"after close"
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(server.wait_closed(), 30)
    arun(main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Server.close_clients/abort_clients: 3.13+")
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_server_close_or_abort_clients(aloop, arun, how):
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for r, w in conns:
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
        server.close()
        getattr(server, how)()
        for r, w in conns:
            try:
                assert await asyncio.wait_for(r.read(), 30) == b""
            except ConnectionResetError:
                pass
            w.close()
        await asyncio.wait_for(server.wait_closed(), 30)
    arun(main())


def test_happy_eyeballs_skips_a_refused_address(aloop, arun, refused_port):
    """Two candidate addresses, the first refuses: the racing connect must end on the second,
    with the losing attempts' sockets and ops cleaned up."""
    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        real_getaddrinfo = loop.getaddrinfo

        async def two_candidates(host, p, *args, **kw):
            if host == "two.candidates.test":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
            return await real_getaddrinfo(host, p, *args, **kw)

        loop.getaddrinfo = two_candidates
        try:
            # 127.0.0.2 is loopback too on Linux but nothing listens there: refused
            reader, writer = await asyncio.open_connection(
                "two.candidates.test", port, happy_eyeballs_delay=0.05)
        finally:
            del loop.getaddrinfo
        assert writer.get_extra_info("peername") == ("127.0.0.1", port)
        writer.write(b"eyeballs")
        assert await reader.readexactly(8) == b"eyeballs"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_open_connection_with_local_addr(aloop, arun):
    async def main():
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=("127.0.0.1", 0))
        assert writer.get_extra_info("sockname")[0] == "127.0.0.1"
        writer.write(b"la")
        assert await reader.readexactly(2) == b"la"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    arun(main())


def test_writing_into_a_child_that_exited(aloop, arun):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "pass", stdin=asyncio.subprocess.PIPE)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):
                proc.stdin.write(b"z" * 65536)
                await asyncio.wait_for(proc.stdin.drain(), 30)
        proc.stdin.close()
    arun(main())


def test_raising_signal_handler_goes_to_exception_handler(aloop, arun):
    before = signal.getsignal(signal.SIGUSR1)
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    async def main():
        loop = asyncio.get_running_loop()
        ok = loop.create_future()

        def bad():
            loop.call_soon(ok.set_result, None)
            raise LookupError("in signal handler")

        loop.add_signal_handler(signal.SIGUSR1, bad)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(ok, 30)
        await asyncio.sleep(0.01)
        loop.remove_signal_handler(signal.SIGUSR1)
    try:
        arun(main())
    finally:
        signal.signal(signal.SIGUSR1, before)
        aloop.set_exception_handler(None)
    assert any(isinstance(c.get("exception"), LookupError) for c in contexts), contexts


def test_debug_mode_workload_is_silent(aloop, arun, tmp_path):
    """In debug mode (thread checks, origin tracking) a normal workload over TCP, Unix
    sockets, sock_*, a pipe and a child process produces no exception-handler call."""
    contexts = []
    aloop.set_debug(True)
    aloop.slow_callback_duration = 10.0        # a loaded machine is not an error
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"debug" * 10000)
        assert await r.readexactly(50000) == b"debug" * 10000
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

        path = str(tmp_path / "d.sock")
        userver = await asyncio.start_unix_server(echo_until_eof, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"unix")
        assert await r.readexactly(4) == b"unix"
        w.close()
        await w.wait_closed()
        userver.close()
        await userver.wait_closed()

        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        await loop.sock_sendall(a, b"sock")
        assert await loop.sock_recv(b, 10) == b"sock"
        a.close()
        b.close()

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"child")
        assert out == b"child" and proc.returncode == 0
    arun(main())
    aloop.set_exception_handler(None)
    assert not contexts, [c.get("message") for c in contexts]
