"""Situations that stress a backend keyed by file descriptor and a loop that keeps ops in
flight: fd numbers reused after close, stop()/run_forever() re-entry with I/O pending, a loop
living in a worker thread, closing a loop with I/O in flight, hundreds of pending receives, and
datagram sends that fail at submission."""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import sys
import threading

import pytest

pytestmark = pytest.mark.timeout(120)


def test_fd_numbers_reused_after_cancel_and_close(aloop, arun):
    """A cancelled op on a closed socket must not haunt the next socket given the same fd."""
    async def main():
        loop = asyncio.get_running_loop()
        reused = 0
        last_fds: set[int] = set()
        for i in range(60):
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            reused += bool({a.fileno(), b.fileno()} & last_fds)
            last_fds = {a.fileno(), b.fileno()}
            msg = b"round %d" % i
            if i % 3 == 0:            # a pending receive, cancelled, then the socket closed
                stale = asyncio.ensure_future(loop.sock_recv(a, 100))
                await asyncio.sleep(0)
                stale.cancel()
                await asyncio.sleep(0)
            elif i % 3 == 1:          # a pending send of more than the socket holds, cancelled
                stale = asyncio.ensure_future(loop.sock_sendall(a, b"s" * (8 << 20)))
                await asyncio.sleep(0.001)
                stale.cancel()
                await asyncio.sleep(0)
            else:                     # a reader callback, removed
                loop.add_reader(a, lambda: None)
                loop.remove_reader(a)
            a.close()
            b.close()
            # the next pair very likely gets the same fd numbers: it must just work
            c, d = socket.socketpair()
            c.setblocking(False)
            d.setblocking(False)
            rx = asyncio.ensure_future(loop.sock_recv(c, 100))
            await asyncio.sleep(0)
            await loop.sock_sendall(d, msg)
            assert await asyncio.wait_for(rx, 30) == msg
            got = loop.create_future()
            loop.add_reader(c, lambda: got.done() or got.set_result(c.recv(100)))
            d.send(b"cb")
            assert await asyncio.wait_for(got, 30) == b"cb"
            loop.remove_reader(c)
            c.close()
            d.close()
        assert reused > 0, "fd numbers were never reused: the test did not test anything"
    arun(main())


def test_stop_and_rerun_with_io_in_flight(aloop):
    """loop.stop() again and again while a transfer runs; each run_forever() picks up the
    ops left in flight by the previous one; nothing is lost."""
    payload = os.urandom(8 * 1024 * 1024)

    async def handler(reader, writer):
        writer.write(payload)
        await writer.drain()
        writer.close()

    async def client(server_ready):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    task = aloop.create_task(client(None))
    runs = 0
    while not task.done():
        aloop.call_soon(aloop.stop)     # stop after one iteration's worth of callbacks
        aloop.run_forever()
        runs += 1
        assert runs < 2_000_000
    assert runs > 5
    assert hashlib.sha256(task.result()).digest() == hashlib.sha256(payload).digest()


def test_loop_in_a_worker_thread(make_loop, monitor_check):
    """A loop created and run in a non-main thread: TCP, subprocess and executor work;
    add_signal_handler refuses with RuntimeError (set_wakeup_fd is main-thread only)."""
    result: dict = {}

    async def main():
        loop = asyncio.get_running_loop()
        with pytest_raises(RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)

        async def echo(reader, writer):
            writer.write(await reader.read())
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"from a thread")
        writer.write_eof()
        echoed = await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('child ok')", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        via_executor = await loop.run_in_executor(None, sum, [1, 2, 3])
        return echoed, out, proc.returncode, via_executor

    def run():
        loop = make_loop()
        try:
            result["value"] = loop.run_until_complete(asyncio.wait_for(main(), 60))
            loop.run_until_complete(loop.shutdown_default_executor())
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            result["error"] = exc
        finally:
            loop.close()
            result["loop"] = loop

    t = threading.Thread(target=run)
    t.start()
    t.join(100)
    assert not t.is_alive()
    if "error" in result:
        raise result["error"]
    assert result["value"] == (b"from a thread", b"child ok\n", 0, 6)
    monitor_check(result["loop"])


class pytest_raises:
    """pytest.raises for use inside the worker thread (reports through the main thread)."""

    def __init__(self, exc_type):
        self.exc_type = exc_type

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError(f"DID NOT RAISE {self.exc_type.__name__}")
        return issubclass(et, self.exc_type)


@pytest.mark.bytes_unread("the loop is closed with connections open and data in flight")
def test_close_loop_with_io_in_flight(aloop, arun, monitor_check):
    async def setup():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        pending = [asyncio.ensure_future(loop.sock_recv(a, 100)),
                   asyncio.ensure_future(loop.sock_sendall(b, b"x" * (16 << 20)))]
        for _, w in conns:
            w.write(b"y" * (1 << 20))
        await asyncio.sleep(0.05)
        return server, conns, pending, (a, b)

    server, conns, pending, socks = arun(setup())
    for p in pending:
        p.cancel()
    aloop.run_until_complete(asyncio.sleep(0))
    aloop.close()                              # transports still open: must not raise
    assert aloop.is_closed()
    monitor_check(aloop, bytes_unread=True)
    for s in socks:
        s.close()


def test_hundreds_of_pending_receives(aloop, arun):
    n = 300

    async def main():
        loop = asyncio.get_running_loop()
        pairs = []
        for _ in range(n):
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            pairs.append((a, b))
        recvs = [asyncio.ensure_future(loop.sock_recv(a, 100)) for a, _ in pairs]
        await asyncio.sleep(0.01)
        assert not any(r.done() for r in recvs)
        order = list(range(n))
        random.shuffle(order)
        for i in order:
            await loop.sock_sendall(pairs[i][1], b"pair %d" % i)
        got = await asyncio.wait_for(asyncio.gather(*recvs), 60)
        assert got == [b"pair %d" % i for i in range(n)]
        for a, b in pairs:
            a.close()
            b.close()
    arun(main())


def test_datagram_send_failing_at_submission_goes_to_error_received(aloop, arun):
    """sendto a broadcast address without SO_BROADCAST fails in the kernel at once (EACCES):
    error_received, the endpoint stays usable, and no buffer outlives its op."""
    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        got = asyncio.Queue()

        class P(asyncio.DatagramProtocol):
            def error_received(self, exc):
                errors.append(exc)

            def datagram_received(self, data, addr):
                got.put_nowait(data)

        tr, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        for _ in range(20):
            tr.sendto(b"x" * 1000, ("255.255.255.255", 9))
        for _ in range(200):
            if len(errors) >= 20:
                break
            await asyncio.sleep(0.01)
        assert errors and all(isinstance(e, OSError) for e in errors), errors
        assert len(errors) == 20, f"{len(errors)} error_received for 20 failing sends"
        tr.sendto(b"to myself", tr.get_extra_info("sockname"))
        assert await asyncio.wait_for(got.get(), 10) == b"to myself", \
            "datagrams queued behind a failed send were never sent"
        tr.close()
    arun(main())
