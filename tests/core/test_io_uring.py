"""The io_uring backend on real sockets and pipes: data, cancels, pinned buffers, the monitor.

Each test runs on ``loopmon.new_event_loop(backend="io_uring")`` and is skipped, with the
reason, where io_uring cannot be set up (old kernel, seccomp, sysctl).  The cancel tests look
at what the kernel really did: a cancelled op stays in flight with its buffer pinned until
its own completion; a completion that carries bytes after the cancel hands them to the next
receive on the socket, in stream order (with the ``cancel-drops-data`` fault: reported as
discarded) -- so ``bytes_received == bytes_delivered + bytes_discarded`` always holds.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time

import pytest

import loopmon
from loopmon.monitor.events import (
    EV_BUF_PIN, EV_BUF_RELEASE, EV_OP_CANCEL, EV_OP_END, EV_OP_SUBMIT, FLAG_DISCARDED,
    FLAG_DRAINED_AT_CLOSE, KIND_ACCEPT, KIND_CONNECT, KIND_READ_PIPE, KIND_RECV,
    KIND_RECV_INTO, KIND_RECVFROM, KIND_SENDTO, KIND_WRITE_PIPE, OUTCOME_CANCELLED,
    OUTCOME_COMPLETED,
)

io_uring = pytest.importorskip("loopmon.backends.io_uring")
_UNAVAILABLE = io_uring.probe()
needs_uring = pytest.mark.skipif(_UNAVAILABLE is not None,
                                 reason=f"io_uring unavailable here: {_UNAVAILABLE}")
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def uloop():
    if _UNAVAILABLE is not None:
        pytest.skip(f"io_uring unavailable here: {_UNAVAILABLE}")
    loop = loopmon.new_event_loop(backend="io_uring")
    yield loop
    if not loop.is_closed():
        loop.close()
    snap = loop.monitor.snapshot()
    assert snap.ops_outstanding == 0 and snap.buffers_live == 0, snap
    assert snap.instrumentation_errors == 0, snap.last_instrumentation_error


def run(loop, coro, timeout=30):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def submitted_kinds(events) -> set:
    return {ev[4] for ev in events if ev[1] == EV_OP_SUBMIT}


def ends_by_op(events) -> dict:
    return {ev[3]: ev for ev in events if ev[1] == EV_OP_END}


# ------------------------------------------------------------------ selection
@needs_uring
def test_selected_by_argument_and_env(monkeypatch):
    loop = loopmon.new_event_loop(backend="io_uring")
    try:
        assert loop.monitor.backend == "io_uring"
        assert isinstance(loop._proactor, io_uring.IoUringProactor)
    finally:
        loop.close()
    monkeypatch.setenv("LOOPMON_BACKEND", "io_uring")
    loop = loopmon.new_event_loop()
    try:
        assert loop.monitor.backend == "io_uring"
    finally:
        loop.close()
    bare = loopmon.new_event_loop(backend="io_uring", instrument=False)
    try:
        assert bare.monitor is None and isinstance(bare._proactor, io_uring.IoUringProactor)
    finally:
        bare.close()
    monkeypatch.delenv("LOOPMON_BACKEND")
    default = loopmon.new_event_loop()
    try:
        assert default.monitor.backend == "selector"
    finally:
        default.close()


def test_unavailable_is_an_error_by_argument_and_a_warning_by_env(monkeypatch):
    def refuse(*a, **kw):
        raise io_uring.IoUringUnavailable(1, "io_uring_setup failed: Operation not permitted")
    monkeypatch.setattr(io_uring, "IoUringProactor", refuse)
    with pytest.raises(io_uring.IoUringUnavailable, match="not permitted"):
        loopmon.new_event_loop(backend="io_uring")
    monkeypatch.setenv("LOOPMON_BACKEND", "io_uring")
    with pytest.warns(RuntimeWarning, match="io_uring backend unavailable"):
        loop = loopmon.new_event_loop()
    try:
        assert loop.monitor.backend == "selector"
    finally:
        loop.close()
    with pytest.raises(ValueError, match="unknown loopmon backend"):
        loopmon.new_event_loop(backend="kqueue")


# ------------------------------------------------------------------ data paths
def test_stream_echo(uloop):
    async def main():
        async def handle(r, w):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for i in range(200):
            msg = bytes([i % 256]) * 1024
            w.write(msg)
            await w.drain()
            assert await r.readexactly(1024) == msg
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
    run(uloop, main())
    events = uloop.monitor.drain()
    # accepts and receives go through the ring; sends complete inline when the socket takes them
    assert {KIND_ACCEPT, KIND_RECV_INTO} <= submitted_kinds(events)
    uloop.close()
    snap = uloop.monitor.snapshot()
    assert snap.bytes_received == snap.bytes_delivered == snap.bytes_sent == 2 * 200 * 1024


def test_large_transfer_checksum(uloop):
    size = 64 * 1024 * 1024

    async def main():
        digest = hashlib.sha256()
        got = 0
        done = asyncio.get_running_loop().create_future()

        async def sink(r, w):
            nonlocal got
            while data := await r.read(1 << 18):
                digest.update(data)
                got += len(data)
            w.close()
            done.set_result(None)
        srv = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        sent = hashlib.sha256()
        chunk = os.urandom(1 << 20)
        for i in range(size >> 20):
            block = bytes([i % 256]) + chunk[1:]
            sent.update(block)
            w.write(block)
            await w.drain()
        w.close()
        await w.wait_closed()
        await done
        srv.close()
        await srv.wait_closed()
        assert got == size and digest.hexdigest() == sent.hexdigest()
    run(uloop, main(), timeout=50)
    uloop.close()
    snap = uloop.monitor.snapshot()
    assert snap.bytes_received == snap.bytes_delivered == size


def test_sock_accept_connect_and_short_sends(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        csock = socket.socket()
        csock.setblocking(False)
        accepting = loop.create_task(loop.sock_accept(lsock))
        await loop.sock_connect(csock, lsock.getsockname())
        conn, addr = await accepting
        assert addr == csock.getsockname() and conn.gettimeout() == 0
        csock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        payload = os.urandom(4 * 1024 * 1024)
        sending = loop.create_task(loop.sock_sendall(csock, payload))
        await asyncio.sleep(0.02)
        [op] = loop.monitor.outstanding()          # the kernel took a part: the rest is pinned
        assert op.kind == "send" and op.requested == len(payload)
        received = bytearray()
        while len(received) < len(payload):
            received += await loop.sock_recv(conn, 1 << 16)
        await sending
        assert received == payload
        for s in (conn, csock, lsock):
            s.close()
    run(uloop, main())
    kinds = submitted_kinds(uloop.monitor.drain())
    assert {KIND_ACCEPT, KIND_CONNECT, KIND_RECV} <= kinds


def test_udp(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        receiving = loop.create_task(loop.sock_recvfrom(b, 2048))
        await asyncio.sleep(0.01)
        await loop.sock_sendto(a, b"ping", b.getsockname())
        data, peer = await receiving
        assert (data, peer) == (b"ping", a.getsockname())
        buf = bytearray(64)
        receiving = loop.create_task(loop.sock_recvfrom_into(a, buf))
        await loop.sock_sendto(b, b"pong!", a.getsockname())
        assert await receiving == (5, b.getsockname()) and buf[:5] == b"pong!"
        a.close()
        b.close()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data.upper(), addr)

        got = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.set_result(data)
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        client, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname"))
        client.sendto(b"hello")
        assert await got == b"HELLO"
        client.close()
        server.close()
        await asyncio.sleep(0.01)
    run(uloop, main())
    kinds = submitted_kinds(uloop.monitor.drain())
    assert {KIND_RECVFROM, KIND_SENDTO} & kinds


def test_pipes(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        reader = asyncio.StreamReader()
        rtrans, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", 0))
        wtrans, wproto = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(wfd, "wb", 0))
        payload = os.urandom(1 << 20)
        wtrans.write(payload)
        got = await reader.readexactly(len(payload))
        assert got == payload
        wtrans.close()
        assert await reader.read() == b""
        rtrans.close()
        await asyncio.sleep(0.01)
    run(uloop, main())
    kinds = submitted_kinds(uloop.monitor.drain())
    assert {KIND_READ_PIPE, KIND_WRITE_PIPE} <= kinds


def test_add_reader_and_threadsafe_wakeup(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        fired = loop.create_future()
        loop.add_reader(a.fileno(), lambda: fired.done() or fired.set_result(a.recv(10)))
        b.send(b"ready")
        assert await fired == b"ready"
        assert loop.remove_reader(a.fileno())
        woke = loop.create_future()
        threading.Timer(0.05, loop.call_soon_threadsafe, (woke.set_result, 1)).start()
        assert await woke == 1
        a.close()
        b.close()
    run(uloop, main())


def test_timeout_sqe_path_for_old_kernels():
    if _UNAVAILABLE is not None:
        pytest.skip(f"io_uring unavailable here: {_UNAVAILABLE}")
    from loopmon.loop import ProactorEventLoop
    from loopmon.monitor import Monitor
    loop = ProactorEventLoop(io_uring.IoUringProactor(Monitor(backend="io_uring"),
                                                      use_timeout_sqe=True))
    try:
        t0 = loop.time()
        loop.run_until_complete(asyncio.sleep(0.05))
        assert loop.time() - t0 >= 0.04

        async def pair():
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            reading = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.01)
            await loop.sock_sendall(b, b"x")
            assert await reading == b"x"
            a.close()
            b.close()
        run(loop, pair())
    finally:
        loop.close()


# ------------------------------------------------------------------ cancels and pinned buffers
def test_cancel_idle_recv_keeps_buffer_until_its_completion(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        mon = loop.monitor
        a, b = socket.socketpair()
        a.setblocking(False)
        fut = loop._proactor.recv(a, 4096)
        await asyncio.sleep(0.02)                  # submitted, in flight, nothing to read
        [op] = mon.outstanding()
        assert op.kind == "recv" and op.buffer_size == 4096
        mon.drain()
        fut.cancel()
        # cancelled for the caller at once -- but still in flight, buffer still pinned
        assert fut.cancelled()
        [op] = mon.outstanding()
        assert op.cancel_requested and mon.snapshot().buffers_live == 1
        assert any(o is fut for o in loop._proactor._inflight.values())
        await asyncio.sleep(0.02)                  # the next pass reaps its -ECANCELED CQE
        assert mon.outstanding() == [] and mon.snapshot().buffers_live == 0
        events = mon.drain()
        codes = [ev[1] for ev in events]
        assert codes.index(EV_OP_CANCEL) < codes.index(EV_OP_END) < codes.index(EV_BUF_RELEASE)
        [end] = [ev for ev in events if ev[1] == EV_OP_END]
        assert end[4] == OUTCOME_CANCELLED and not end[7] & FLAG_DISCARDED
        assert not loop._proactor._inflight or all(
            o._lm_fd != a.fileno() for o in loop._proactor._inflight.values())
        # nothing was lost: the socket still gives everything to the next reader
        b.send(b"after")
        assert await loop.sock_recv(a, 100) == b"after"
        a.close()
        b.close()
    run(uloop, main())


def test_cancel_before_submission_becomes_a_nop(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.send(b"data waiting")                   # the recv would complete at once...
        fut = loop._proactor.recv(a, 4096)
        fut.cancel()                               # ...but never reaches the kernel
        await asyncio.sleep(0.01)
        assert loop.monitor.snapshot().bytes_discarded == 0
        assert await loop.sock_recv(a, 100) == b"data waiting"
        a.close()
        b.close()
    run(uloop, main())
    ends = [ev for ev in uloop.monitor.drain() if ev[1] == EV_OP_END]
    assert ends[0][4] == OUTCOME_CANCELLED


@pytest.mark.parametrize("drop", [False, True], ids=["carry-over", "cancel-drops-data"])
def test_cancel_race_never_loses_bytes_silently(drop):
    """Cancel receives while data arrives: each byte is delivered, or reported discarded.

    By default a late completion's bytes are carried over to the next receive (nothing is
    discarded); with the ``cancel-drops-data`` fault they are dropped and reported.
    """
    if _UNAVAILABLE is not None:
        pytest.skip(f"io_uring unavailable here: {_UNAVAILABLE}")
    loop = loopmon.new_event_loop(backend="io_uring",
                                  faults=["cancel-drops-data"] if drop else [])
    rounds = 300
    chunk = 100

    async def main():
        mon = loop.monitor
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        delivered = 0
        discarded_before = mon.bytes_discarded
        for i in range(rounds):
            fut = loop._proactor.recv(a, 4096)
            if i % 2:
                await asyncio.sleep(0)             # let the recv reach the kernel first
            b.send(bytes(chunk))                  # data lands while the recv is in flight
            if i % 3 == 0:
                time.sleep(0.0005)                 # (task work runs: the CQE may be posted)
            got = 0
            if fut.done() and not fut.cancelled():
                got = len(fut.result())
                mon.delivered(got)                 # what sock_recv would count
            else:
                fut.cancel()
            await asyncio.sleep(0.001)             # the cancelled op's CQE arrives
            # the rest of this round's bytes: carried over, still queued -- or discarded
            while got < chunk - (mon.bytes_discarded - discarded_before):
                got += len(await asyncio.wait_for(loop.sock_recv(a, 4096), 5))
            discarded_before = mon.bytes_discarded
            delivered += got
        await asyncio.sleep(0.01)
        snap = mon.snapshot()
        assert snap.ops_outstanding == 0
        assert snap.bytes_received == snap.bytes_delivered + snap.bytes_discarded
        assert delivered + snap.bytes_discarded == rounds * chunk
        if not drop:
            assert snap.bytes_discarded == 0
        a.close()
        return snap
    try:
        snap = run(loop, main())
        ends = ends_by_op(loop.monitor.drain())
    finally:
        loop.close()
    discarded = [e for e in ends.values() if e[7] & FLAG_DISCARDED]
    assert sum(e[5] for e in discarded) == snap.bytes_discarded
    assert all(e[4] == OUTCOME_COMPLETED for e in discarded)   # real late completions
    print(f"\ncancel race ({'drop' if drop else 'carry'}): {snap.late_completions} late "
          f"completions, {len(discarded)} discarded ({snap.bytes_discarded} B), "
          f"{snap.ops_cancelled} cancelled clean, {snap.bytes_delivered} B delivered")


def test_cancelled_accept_that_completes_hands_the_connection_on(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        for _ in range(5):
            acc = loop._proactor.accept(lsock)
            await asyncio.sleep(0.01)
            c = socket.create_connection(lsock.getsockname(), timeout=5)
            time.sleep(0.002)
            acc.cancel()
            conn, addr = await asyncio.wait_for(loop.sock_accept(lsock), 5)
            assert addr == c.getsockname()
            conn.close()
            c.close()
        lsock.close()
    run(uloop, main())


def test_recv_right_after_a_cancelled_recv_keeps_the_stream_in_order(uloop):
    """Cancel a receive whose bytes have arrived, and receive again at once, in the same task.

    (What ``asyncio.wait_for`` does on 3.12+.)  The cancelled op's CQE is not reaped yet; if
    the new receive went straight to the kernel it would read the *later* bytes while the
    earlier ones wait in the carry-over: the stream would come out reordered.  It queues
    behind the cancelled op instead, and gets the carried bytes first.
    """
    async def main():
        loop = asyncio.get_running_loop()
        mon = loop.monitor
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        sent = bytearray()
        got = bytearray()
        for i in range(40):
            first, then = b"<%d:first>" % i, b"<%d:then>" % i
            fut = loop._proactor.recv(a, 4096)
            await asyncio.sleep(0.005)             # in the kernel, nothing to read yet
            b.send(first)
            sent += first
            time.sleep(0.002)                      # the kernel completes the recv...
            fut.cancel()                           # ...before the cancel gets there
            b.send(then)                           # later bytes, already in the socket
            sent += then
            got += await loop.sock_recv(a, 4096)   # no yield between the cancel and this
            while len(got) < len(sent):
                got += await asyncio.wait_for(loop.sock_recv(a, 4096), 5)
            assert bytes(got) == bytes(sent), f"round {i}: stream reordered"
        await asyncio.sleep(0.01)
        snap = mon.snapshot()
        assert snap.bytes_discarded == 0
        assert snap.bytes_received == snap.bytes_delivered == len(sent)
        a.close()
        b.close()
        return snap
    snap = run(uloop, main())
    print(f"\nrecv right after a cancel: {snap.late_completions} late completions carried")


def test_a_queued_recv_cancelled_before_submission_just_ends(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        mon = loop.monitor
        proactor = loop._proactor
        a, b = socket.socketpair()
        a.setblocking(False)
        fut = proactor.recv(a, 4096)
        await asyncio.sleep(0.01)                  # in the kernel
        fut.cancel()                               # its CQE has not been reaped yet
        mon.drain()
        queued = proactor.recv(a, 4096)            # queued behind the cancelled op
        assert not queued.done() and a.fileno() in proactor._queued
        assert all(o is not queued for o in proactor._inflight.values())
        ops = {o.kind for o in mon.outstanding()}
        assert ops == {"recv"} and len(mon.outstanding()) == 2
        queued.cancel()                            # never reached the kernel: ends now
        assert queued.cancelled() and a.fileno() not in proactor._queued
        events = mon.drain()
        [end] = [ev for ev in events if ev[1] == EV_OP_END]
        assert end[4] == OUTCOME_CANCELLED
        assert not any(ev[1] == EV_BUF_PIN for ev in events)
        b.send(b"still there")
        assert await loop.sock_recv(a, 100) == b"still there"
        assert not proactor._held and not proactor._queued
        a.close()
        b.close()
    run(uloop, main())


def test_close_with_ops_in_flight(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        pending = [loop._proactor.recv(a, 1000), loop._proactor.accept(lsock)]
        await asyncio.sleep(0.02)
        assert len(loop.monitor.outstanding()) == 2
        return pending, (a, b, lsock)
    pending, socks = run(uloop, main())
    proactor = uloop._proactor
    uloop.close()
    snap = uloop.monitor.snapshot()
    assert snap.ops_outstanding == 0 and snap.buffers_live == 0 and snap.buffer_bytes_live == 0
    ends = [ev for ev in uloop.monitor.drain() if ev[1] == EV_OP_END]
    # cancelled by close() and ended by their own -ECANCELED completions (nothing orphaned)
    assert len(ends) == 2 and all(e[4] == OUTCOME_CANCELLED and e[7] & FLAG_DRAINED_AT_CLOSE
                                  for e in ends)
    assert all(f.cancelled() for f in pending)
    from loopmon.backends.uring_memory import _ORPHANED
    assert not _ORPHANED and not proactor._inflight
    for s in socks:
        s.close()


def test_ring_sends_pin_and_finish_the_whole_buffer():
    """``inline_sends=False``: every send is an IORING_OP_SEND; short ones resubmit the rest."""
    if _UNAVAILABLE is not None:
        pytest.skip(f"io_uring unavailable here: {_UNAVAILABLE}")
    from loopmon.loop import ProactorEventLoop
    from loopmon.monitor import Monitor
    loop = ProactorEventLoop(io_uring.IoUringProactor(Monitor(backend="io_uring"),
                                                      inline_sends=False))

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        await loop.sock_sendall(a, b"x" * 1000)
        assert await loop.sock_recv(b, 2000) == b"x" * 1000
        payload = os.urandom(8 * 1024 * 1024)    # far beyond the socket buffer: short sends
        sending = asyncio.ensure_future(loop.sock_sendall(a, bytearray(payload)))
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(b, 1 << 16)
        await sending
        assert got == payload
        a.close()
        b.close()
    try:
        run(loop, main())
        events = loop.monitor.drain()
    finally:
        loop.close()
    codes = [ev[1] for ev in events]
    assert loop.monitor.snapshot().ops_inline == 0
    assert codes.count(EV_BUF_PIN) == codes.count(EV_BUF_RELEASE) >= 4
    assert loop.monitor.snapshot().bytes_sent == 1000 + 8 * 1024 * 1024


def test_carried_bytes_of_a_closed_socket_are_reported_discarded(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        mon = loop.monitor
        a, b = socket.socketpair()
        a.setblocking(False)
        fut = loop._proactor.recv(a, 4096)
        await asyncio.sleep(0.01)                  # in flight
        b.send(b"12345")
        time.sleep(0.002)                          # the kernel completes the recv...
        fut.cancel()                               # ...before the cancel gets there
        await asyncio.sleep(0.01)
        a.close()                                  # nobody will ever receive the carry
        await asyncio.sleep(0.01)
        snap = mon.snapshot()
        assert not loop._proactor._carry.by_fd
        assert snap.bytes_received == snap.bytes_delivered + snap.bytes_discarded
        if snap.late_completions:
            assert snap.bytes_discarded == 5
        b.close()
    run(uloop, main())


def test_recv_into_leaves_the_callers_buffer_alone_until_completion(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        buf = bytearray(64)
        fut = loop._proactor.recv_into(a, buf)
        await asyncio.sleep(0.01)                  # in flight: the kernel has our pooled buffer
        buf.extend(b"resizable")                   # not exported to the kernel, so not locked
        del buf[64:]
        b.send(b"late bytes")
        time.sleep(0.002)
        fut.cancel()
        await asyncio.sleep(0.01)
        assert buf == bytearray(64)                # a late completion never touched it
        n = await loop.sock_recv_into(a, buf)      # ...its bytes come with the next receive
        assert bytes(buf[:n]) == b"late bytes"
        a.close()
        b.close()
    run(uloop, main())


def test_a_kernel_without_our_opcodes_is_unavailable(monkeypatch):
    if _UNAVAILABLE is not None:
        pytest.skip(f"io_uring unavailable here: {_UNAVAILABLE}")
    from loopmon.backends import uring_ring        # the kernel interface: probe and setup
    monkeypatch.setattr(uring_ring, "_NEEDED_OPS", {"FROM_THE_FUTURE": 250})
    reason = io_uring.probe()
    assert reason and "IORING_OP_FROM_THE_FUTURE" in reason and "5.6" in reason
    with pytest.raises(io_uring.IoUringUnavailable):
        loopmon.new_event_loop(backend="io_uring")
