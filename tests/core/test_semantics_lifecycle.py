"""Loop lifecycle: asyncio.Runner(loop_factory=...) and asyncio.run(..., loop_factory=...),
errors on a closed or running loop, callback scheduling order, the exception handler,
asyncio.timeout / wait_for around I/O, executor and async-generator shutdown."""
from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


async def _small_io_workload() -> bytes:
    async def handler(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"runner\n")
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return line


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is 3.11+")
def test_runner_with_loop_factory(make_loop, loop_kind, monitor_check):
    with asyncio.Runner(loop_factory=make_loop) as runner:
        loop = runner.get_loop()
        if loop_kind.startswith("loopmon"):
            import loopmon
            assert isinstance(loop, loopmon.ProactorEventLoop)
        assert runner.run(_small_io_workload()) == b"RUNNER\n"
        assert runner.run(asyncio.sleep(0, "again")) == "again"
    assert loop.is_closed()
    monitor_check(loop)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory(make_loop, loop_kind, monitor_check):
    seen = []

    async def main():
        seen.append(asyncio.get_running_loop())
        return await _small_io_workload()

    assert asyncio.run(main(), loop_factory=make_loop) == b"RUNNER\n"
    assert seen[0].is_closed()
    monitor_check(seen[0])


def test_run_until_complete_and_run_forever_basics(aloop):
    order = []
    aloop.call_soon(order.append, 1)
    aloop.call_soon(order.append, 2)
    aloop.call_later(0.02, order.append, 4)
    aloop.call_later(0.01, order.append, 3)
    aloop.call_at(aloop.time() + 0.03, aloop.stop)
    aloop.run_forever()
    assert order == [1, 2, 3, 4]
    handle = aloop.call_later(10, order.append, "never")
    handle.cancel()
    assert handle.cancelled()
    assert aloop.run_until_complete(asyncio.sleep(0.01, "slept")) == "slept"
    assert not aloop.is_running() and not aloop.is_closed()


def test_closed_loop_errors(aloop):
    aloop.run_until_complete(asyncio.sleep(0))
    aloop.close()
    assert aloop.is_closed()
    aloop.close()                                        # idempotent
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        aloop.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError):
        aloop.run_forever()
    with pytest.raises(RuntimeError):
        aloop.call_soon(lambda: None)
    with pytest.raises(RuntimeError):
        aloop.call_later(1, lambda: None)
    with pytest.raises(RuntimeError):
        aloop.call_soon_threadsafe(lambda: None)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        aloop.create_task(coro)
    coro.close()
    with pytest.raises(RuntimeError):
        aloop.run_in_executor(None, print)


def test_closed_loop_io_methods_raise(aloop):
    aloop.close()
    s = socket.socket()
    s.setblocking(False)
    rfd, wfd = os.pipe()
    rfile = open(rfd, "rb", buffering=0)
    for factory in (lambda: aloop.create_connection(asyncio.Protocol, "127.0.0.1", 9),
                    lambda: aloop.sock_connect(s, ("127.0.0.1", 9)),
                    lambda: aloop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           local_addr=("127.0.0.1", 0)),
                    lambda: aloop.connect_read_pipe(asyncio.Protocol, rfile)):
        coro = factory()
        with pytest.raises(RuntimeError):
            coro.send(None)   # drive the coroutine by hand: the loop itself cannot run
        coro.close()
    s.close()
    rfile.close()
    os.close(wfd)


def test_running_loop_errors(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            loop.run_until_complete(coro)
        coro.close()
        with pytest.raises(RuntimeError):
            loop.close()
        assert not loop.is_closed()
        if not (3, 13, 0) <= sys.version_info[:3] < (3, 13, 1):
            # CPython 3.13.0 runs its run_forever cleanup even when the setup check fails,
            # which unsets the running loop of the loop that *is* running: skip it there.
            with pytest.raises(RuntimeError):
                loop.run_forever()
            assert asyncio.get_running_loop() is loop
        await asyncio.sleep(0)
    arun(main())


def test_exception_handler_gets_callback_errors(aloop, arun):
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    assert aloop.get_exception_handler() is not None

    def bad():
        raise ZeroDivisionError("in callback")

    async def main():
        asyncio.get_running_loop().call_soon(bad)
        await asyncio.sleep(0.01)
    arun(main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    aloop.set_exception_handler(None)


def test_protocol_exception_reported_and_transport_closed(aloop, arun):
    """An exception in data_received goes to the exception handler and the transport closes
    with connection_lost(exc) (selector transports: _fatal_error).  NB: the stdlib proactor's
    _ProactorReadPipeTransport lets it escape _loop_reading and keeps the transport open."""
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    class Bad(asyncio.Protocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def data_received(self, data):
            raise ValueError("protocol bug")

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        loop = asyncio.get_running_loop()
        async def handler(reader, writer):
            writer.write(b"trigger")
            await reader.read()          # until the client's transport goes away
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(Bad, "127.0.0.1", port)
        exc = await asyncio.wait_for(proto.lost, 10)
        assert isinstance(exc, ValueError)
        server.close()
        await server.wait_closed()
    arun(main())
    assert any(isinstance(c.get("exception"), ValueError) for c in contexts), contexts
    aloop.set_exception_handler(None)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_around_io(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await loop.sock_recv(a, 10)
        await loop.sock_sendall(b, b"late")
        async with asyncio.timeout(30):
            assert await loop.sock_recv(a, 10) == b"late"
        a.close()
        b.close()
    arun(main())


def test_wait_for_around_connect_and_accept(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(5)
        lsock.setblocking(False)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_accept(lsock), 0.02)
        c = socket.socket()
        c.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(c, lsock.getsockname()), 30)
        conn, _ = await asyncio.wait_for(loop.sock_accept(lsock), 30)
        for s in (c, conn, lsock):
            s.close()
    arun(main())


def test_shutdown_asyncgens_and_default_executor(aloop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        await asyncio.get_running_loop().run_in_executor(None, sum, [1])
        return g

    g = aloop.run_until_complete(main())
    aloop.run_until_complete(aloop.shutdown_asyncgens())
    assert finalized == [True]
    aloop.run_until_complete(aloop.shutdown_default_executor())
    del g


def test_debug_flag_and_slow_callback(aloop):
    aloop.set_debug(True)
    assert aloop.get_debug()
    aloop.set_debug(False)
    assert not aloop.get_debug()


def test_time_is_monotonic(aloop):
    t1 = aloop.time()
    t2 = aloop.time()
    assert t2 >= t1
    assert aloop.run_until_complete(asyncio.sleep(0.01, aloop.time)) () >= t1 + 0.005
