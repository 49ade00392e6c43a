"""The POSIX parts of the loop and the backend's own traps, with real fds and processes.

Unix sockets, pipes, subprocesses, signals, add_reader/add_writer, sendfile, half-close,
server close with accepts in flight, partial sends, fd-number reuse after a close behind
the backend's back.  Each test checks the monitor's close invariants too.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import threading

import pytest

import loopmon

TIMEOUT = 60


def run(coro_fn, *, instrument=True):
    loop = loopmon.new_event_loop(instrument=instrument)
    try:
        result = loop.run_until_complete(asyncio.wait_for(coro_fn(loop), TIMEOUT))
    finally:
        loop.close()
    if loop.monitor is not None:
        snap = loop.monitor.snapshot()
        assert snap.ops_outstanding == 0 and snap.buffers_live == 0, loop.monitor.outstanding()
        assert snap.bytes_received == snap.bytes_delivered, snap
    return result, loop.monitor


@pytest.mark.parametrize("instrument", [True, False])
def test_unix_socket_echo(instrument):
    async def main(loop):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s.sock")

            async def handler(reader, writer):
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()

            server = await asyncio.start_unix_server(handler, path)
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"over a unix socket\n")
            assert await reader.readline() == b"over a unix socket\n"
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
    run(main, instrument=instrument)


def test_half_close_then_reply():
    async def main(loop):
        async def handler(reader, writer):
            data = await reader.read()          # until the client's EOF
            writer.write(data[::-1])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"abcdef")
        writer.write_eof()
        assert await reader.read() == b"fedcba"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    run(main)


def test_server_close_with_pending_accept():
    async def main(loop):
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        await asyncio.sleep(0.05)
        assert [o.kind for o in loop.monitor.outstanding()] == ["accept"]
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.02)
        assert loop.monitor.outstanding() == []
        snap = loop.monitor.snapshot()
        assert snap.ops_cancelled >= 1
    run(main)


def test_pipes_read_and_write():
    async def main(loop):
        r1, w1 = os.pipe()
        got = []
        done = loop.create_future()

        class Reader(asyncio.Protocol):
            def data_received(self, data):
                got.append(data)

            def connection_lost(self, exc):
                done.set_result(exc)

        rtr, _ = await loop.connect_read_pipe(Reader, os.fdopen(r1, "rb", 0))
        wtr, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w1, "wb", 0))
        payload = os.urandom(300_000)           # more than a pipe buffer: writes go pending
        wtr.write(payload)
        wtr.close()
        assert await done is None
        assert b"".join(got) == payload
        kinds = {e[4] for e in loop.monitor.drain() if e[1] in (1, 2)}
        from loopmon.monitor.events import KIND_READ_PIPE, KIND_WRITE_PIPE
        assert {KIND_READ_PIPE, KIND_WRITE_PIPE} <= kinds
    run(main)


def test_write_pipe_learns_reader_closed():
    async def main(loop):
        r, w = os.pipe()
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)

        wtr, _ = await loop.connect_write_pipe(P, os.fdopen(w, "wb", 0))
        os.close(r)
        await asyncio.wait_for(lost, 10)
        assert wtr.is_closing()
    run(main)


@pytest.mark.parametrize("instrument", [True, False])
def test_subprocess_stdin_stdout(instrument):
    async def main(loop):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"hello child" * 1000)
        assert out == b"HELLO CHILD" * 1000
        assert proc.returncode == 0
        proc2 = await asyncio.create_subprocess_shell("exit 7")
        assert await proc2.wait() == 7
        proc3 = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
        proc3.terminate()
        assert await proc3.wait() == -signal.SIGTERM
    run(main, instrument=instrument)


def test_signal_handler_and_errors():
    async def main(loop):
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(got, 10) == "usr1"
        assert loop.remove_signal_handler(signal.SIGUSR1)
        assert not loop.remove_signal_handler(signal.SIGUSR1)
        with pytest.raises(TypeError):
            loop.add_signal_handler("x", lambda: None)
        with pytest.raises(ValueError):
            loop.add_signal_handler(10_000, lambda: None)
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(signal.SIGKILL, lambda: None)

        async def coro():
            pass
        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR2, coro)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        assert loop.remove_signal_handler(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    run(main)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_from_other_thread_is_runtime_error():
    loop = loopmon.new_event_loop()
    errors = []

    def other():
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    loop.close()
    assert errors


def test_call_soon_threadsafe_wakes_a_sleeping_loop():
    async def main(loop):
        fut = loop.create_future()
        threading.Timer(0.1, loop.call_soon_threadsafe, args=(fut.set_result, "woken")).start()
        return await asyncio.wait_for(fut, 10)
    assert run(main)[0] == "woken"


def test_add_reader_add_writer():
    async def main(loop):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        readable = loop.create_future()
        writable = loop.create_future()
        loop.add_reader(a, lambda: readable.done() or readable.set_result(a.recv(100)))
        loop.add_writer(b.fileno(), lambda: writable.done() or writable.set_result(True))
        assert await writable
        assert loop.remove_writer(b.fileno())
        assert not loop.remove_writer(b.fileno())
        b.send(b"ping")
        assert await readable == b"ping"
        assert loop.remove_reader(a)
        with pytest.raises(ValueError):
            loop.add_reader(-1, lambda: None)
        a.close()
        b.close()
    run(main)


def test_sock_sendfile_native(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    async def main(loop):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got = bytearray()

        async def drain():
            while len(got) < len(data) - 1000:
                got.extend(await loop.sock_recv(b, 65536))

        reader = loop.create_task(drain())
        with open(path, "rb") as f:
            sent = await loop.sock_sendfile(a, f, offset=1000, fallback=False)
            assert f.tell() == len(data)
        await reader
        assert sent == len(data) - 1000 and bytes(got) == data[1000:]
        a.close()
        b.close()
        kinds = [e[4] for e in loop.monitor.drain() if e[1] in (1, 2)]
        from loopmon.monitor.events import KIND_SENDFILE
        assert KIND_SENDFILE in kinds
    run(main)


def test_partial_send_stays_pending_until_all_sent():
    async def main(loop):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        payload = os.urandom(2 * 1024 * 1024)
        send = loop.create_task(loop.sock_sendall(a, payload))
        await asyncio.sleep(0.05)
        [op] = loop.monitor.outstanding()
        assert op.kind == "send" and op.requested == len(payload)
        assert 0 < op.buffer_size < len(payload)    # the unsent remainder is pinned
        got = bytearray()
        while len(got) < len(payload):
            got.extend(await loop.sock_recv(b, 1 << 16))
        assert await send is None
        assert bytes(got) == payload
        assert loop.monitor.snapshot().bytes_sent == len(payload)
        a.close()
        b.close()
    run(main)


def test_fd_reuse_after_close_behind_the_backs_back():
    """A socket closed while its fd is (lazily) registered; a new socket gets the same fd."""
    async def main(loop):
        for _ in range(20):
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            t = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(b"x")
            assert await t == b"x"
            a.close()     # the backend still has a's fd registered (lazily)
            b.close()
        return "ok"
    assert run(main)[0] == "ok"


def test_closed_loop_and_closed_socket_errors():
    loop = loopmon.new_event_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.close()

    async def on_closed_socket():
        s = socket.socket()
        s.setblocking(False)
        s.close()
        with pytest.raises(OSError):
            await loop.sock_recv(s, 10)
        with pytest.raises(OSError):
            await loop.sock_sendall(s, b"x")

    loop.run_until_complete(on_closed_socket())
    loop.close()
    sleeper = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(sleeper)
    sleeper.close()
    coro = loop.sock_recv(a, 10)
    with pytest.raises(RuntimeError):
        coro.send(None)
    with pytest.raises(RuntimeError):
        loop.add_reader(a.fileno(), lambda: None)
    a.close()
    assert loop.monitor.snapshot().ops_outstanding == 0


def test_debug_mode_requires_non_blocking_socket():
    async def main(loop):
        loop.set_debug(True)
        s = socket.socket()
        try:
            with pytest.raises(ValueError):
                await loop.sock_recv(s, 10)
        finally:
            s.close()
            loop.set_debug(False)
    run(main)


def test_subprocess_without_pidfd_uses_a_waitpid_thread(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)

    async def main(loop):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('hi')", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert out.strip() == b"hi" and proc.returncode == 0
        assert not loop._child_pidfds
    run(main)


def test_another_loop_does_not_steal_signal_wakeups():
    """The base proactor grabs the process-wide wakeup fd at construction and drops it at
    close; loopmon gives it back, so a second loop's life does not mute the first's signals."""
    async def main(loop):
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR2, got.set_result, "usr2")
        other = loopmon.new_event_loop()
        other.close()
        plain = asyncio.new_event_loop()
        plain.close()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert await asyncio.wait_for(got, 10) == "usr2"
        loop.remove_signal_handler(signal.SIGUSR2)
    run(main)


def test_add_reader_then_ops_on_the_same_fd():
    """add_reader's handle survives ops on the same fd, and a recycled fd number."""
    async def main(loop):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        hits = []
        loop.add_reader(b.fileno(), lambda: hits.append(1))
        t = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        b.send(b"to a")
        assert await t == b"to a"
        a.send(b"to b")
        while not hits:
            await asyncio.sleep(0.01)
        assert loop.remove_reader(b.fileno())
        assert b.recv(10) == b"to b"
        old_fd = a.fileno()
        a.close()
        c, d = socket.socketpair()       # likely reuses a's fd number
        c.setblocking(False)
        d.setblocking(False)
        t = loop.create_task(loop.sock_recv(c, 10))
        await asyncio.sleep(0.01)
        d.send(b"fresh")
        assert await t == b"fresh"
        for s in (b, c, d):
            s.close()
        return old_fd
    run(main)


def test_selector_backend_satisfies_the_backend_protocol():
    from loopmon.backends.base import ProactorBackend
    from loopmon.backends.selector import SelectorProactor
    backend = SelectorProactor()
    try:
        assert isinstance(backend, ProactorBackend)
    finally:
        backend.close()


def test_ctrl_c_interrupts_a_sleeping_program():
    import subprocess
    code = (
        "import asyncio, sys, loopmon\n"
        "loopmon.install()\n"
        "async def main():\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err


def test_sock_sendall_of_a_typed_memoryview_sends_all_bytes():
    import array
    payload = array.array("i", range(300_000))     # 1.2 MB, 4-byte items

    async def main(loop):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        send = loop.create_task(loop.sock_sendall(a, memoryview(payload)))
        got = bytearray()
        while len(got) < len(payload) * payload.itemsize:
            got.extend(await loop.sock_recv(b, 1 << 16))
        await send
        assert bytes(got) == payload.tobytes()
        assert loop.monitor.snapshot().bytes_sent == len(got)
        a.close()
        b.close()
    run(main)


def test_udp_endpoint_keeps_receiving_after_error_received():
    """An ICMP port-unreachable goes to error_received; the endpoint still receives after it
    (the stdlib proactor's datagram transport stops reading for good)."""
    async def main(loop):
        got = asyncio.Queue()
        errors = []

        class P(asyncio.DatagramProtocol):
            def error_received(self, exc):
                errors.append(exc)

            def datagram_received(self, data, addr):
                got.put_nowait(data)

        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind(("127.0.0.1", 0))
        addr = dead.getsockname()
        dead.close()
        tr, _ = await loop.create_datagram_endpoint(P, remote_addr=addr)
        for _ in range(200):
            if errors:
                break
            tr.sendto(b"anyone?")
            await asyncio.sleep(0.02)
        assert errors and isinstance(errors[0], ConnectionRefusedError)
        alive = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        alive.bind(addr)
        alive.sendto(b"back", tr.get_extra_info("sockname"))
        assert await asyncio.wait_for(got.get(), 10) == b"back"
        tr.close()
        alive.close()
        await asyncio.sleep(0.01)
    run(main)
