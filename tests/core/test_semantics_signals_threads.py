"""Signals (add/remove_signal_handler, errors, cleanup at close), add_reader/add_writer,
call_soon_threadsafe from many threads waking an idle loop, run_in_executor."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _restore_sigusr():
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for s, h in before.items():
        signal.signal(s, h)


def test_signal_handler_runs_in_loop_with_args(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        def handler(*args):
            assert asyncio.get_running_loop() is loop
            if not got.done():
                got.set_result(args)

        loop.add_signal_handler(signal.SIGUSR1, handler, "a", 2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(got, 30) == ("a", 2)
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR1) is False
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    arun(main())


def test_signal_from_another_thread_wakes_idle_loop(aloop, arun):
    """The loop sleeps with nothing scheduled; a thread raises SIGUSR2; the handler must run
    without waiting for some unrelated timer (the only one is the 30 s wait_for)."""
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR2, lambda: got.done() or got.set_result(True))
        t = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2))
        t.start()
        started = time.monotonic()
        try:
            await asyncio.wait_for(got, 30)
        finally:
            t.join()
        assert time.monotonic() - started < 25, "signal did not wake the loop (hang detector)"
        loop.remove_signal_handler(signal.SIGUSR2)
    arun(main())


def test_signal_handler_replaced_and_repeated(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        calls = []
        loop.add_signal_handler(signal.SIGUSR1, calls.append, "old")
        loop.add_signal_handler(signal.SIGUSR1, calls.append, "new")   # replaces
        for _ in range(3):
            n = len(calls)
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(3000):
                if len(calls) > n:
                    break
                await asyncio.sleep(0.01)
        assert calls and set(calls) == {"new"}
        loop.remove_signal_handler(signal.SIGUSR1)
    arun(main())


def test_signal_handler_errors(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(signal.SIGKILL, lambda: None)      # cannot be caught
        with pytest.raises(ValueError):
            loop.add_signal_handler(10_000, lambda: None)               # out of range
        with pytest.raises(ValueError):
            loop.remove_signal_handler(10_000)
        with pytest.raises(TypeError):
            loop.add_signal_handler("SIGUSR1", lambda: None)
        with pytest.raises(TypeError):
            async def coro_fn():
                pass
            loop.add_signal_handler(signal.SIGUSR1, coro_fn)
    arun(main())


def test_signal_handlers_removed_at_close(aloop, arun):
    arun(asyncio.sleep(0))
    aloop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    aloop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_add_signal_handler_after_close_raises(aloop):
    aloop.close()
    with pytest.raises(RuntimeError):
        aloop.add_signal_handler(signal.SIGUSR1, lambda: None)


# ---------------------------------------------------------------- add_reader / add_writer

def test_add_reader_add_writer(aloop, arun):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        writable = loop.create_future()
        loop.add_reader(a.fileno(), lambda: readable.done() or readable.set_result(a.recv(100)))
        loop.add_writer(b, lambda: writable.done() or writable.set_result("w"))  # file object
        assert await asyncio.wait_for(writable, 30) == "w"
        assert loop.remove_writer(b) is True
        assert loop.remove_writer(b) is False
        await asyncio.sleep(0.01)
        assert not readable.done()
        b.send(b"ping")
        assert await asyncio.wait_for(readable, 30) == b"ping"
        assert loop.remove_reader(a.fileno()) is True
        assert loop.remove_reader(a.fileno()) is False
        # a new reader on the same fd replaces the previous one
        hits = []
        loop.add_reader(a, hits.append, "first")
        loop.add_reader(a, hits.append, "second")
        b.send(b"x")
        while not hits:
            await asyncio.sleep(0.005)
        assert set(hits) == {"second"}
        loop.remove_reader(a)
        a.recv(100)
    arun(main())
    a.close()
    b.close()


def test_add_reader_errors(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError):
            loop.add_reader(object(), lambda: None)
        with pytest.raises(ValueError):
            loop.add_writer(-1, lambda: None)
        assert loop.remove_reader(12345) is False     # never registered
    arun(main())


def test_add_reader_after_close_raises(aloop):
    a, b = socket.socketpair()
    aloop.close()
    with pytest.raises(RuntimeError):
        aloop.add_reader(a, lambda: None)
    a.close()
    b.close()


# ---------------------------------------------------------------- threads

def test_call_soon_threadsafe_from_many_threads(aloop, arun):
    n_threads, per_thread = 16, 200

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        count = 0

        def bump():
            nonlocal count
            assert threading.current_thread() is threading.main_thread()
            count += 1
            if count == n_threads * per_thread and not done.done():
                done.set_result(None)

        barrier = threading.Barrier(n_threads)

        def worker():
            barrier.wait()
            for _ in range(per_thread):
                loop.call_soon_threadsafe(bump)

        threads = [threading.Thread(target=worker) for _ in range(n_threads)]
        for t in threads:
            t.start()
        await asyncio.wait_for(done, 60)
        for t in threads:
            t.join()
        assert count == n_threads * per_thread
    arun(main())


def test_call_soon_threadsafe_wakes_idle_loop(aloop, arun):
    """Each thread waits until the loop is idle, then posts one callback.  Nothing else is
    scheduled: without a working self-pipe wake-up the loop would sleep until the 30 s timeout."""
    async def main():
        loop = asyncio.get_running_loop()
        for round_ in range(5):
            fut = loop.create_future()
            t = threading.Timer(0.05, loop.call_soon_threadsafe, (fut.set_result, round_))
            started = time.monotonic()
            t.start()
            assert await asyncio.wait_for(fut, 30) == round_
            t.join()
            assert time.monotonic() - started < 25, "call_soon_threadsafe did not wake the loop"
    arun(main())


def test_run_in_executor(aloop, arun):
    from concurrent.futures import ThreadPoolExecutor

    def work(x):
        time.sleep(0.01)
        return x * 2, threading.current_thread() is threading.main_thread()

    def boom():
        raise KeyError("from executor")

    async def main():
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(None, work, i) for i in range(20)))
        assert results == [(i * 2, False) for i in range(20)]
        with pytest.raises(KeyError):
            await loop.run_in_executor(None, boom)
        with ThreadPoolExecutor(2) as ex:
            assert (await loop.run_in_executor(ex, work, 21))[0] == 42
        assert await asyncio.to_thread(sum, [1, 2, 3]) == 6
    arun(main())


def test_add_reader_on_a_transports_fd_is_refused(aloop, arun):
    """asyncio refuses add_reader/add_writer on an fd owned by a live transport (RuntimeError):
    a second reader would steal the transport's bytes."""
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        fd = tr.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError):
            loop.add_writer(fd, lambda: None)
        tr.close()
        server.close()
        await server.wait_closed()
    arun(main())
