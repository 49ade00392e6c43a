"""The monitor tells the truth: counts, pending vs inline, cancels, close, faults, errors.

Real sockets on loopback, a fresh loopmon loop per test.  Every clean workload ends with the
invariants the issue asks for: nothing outstanding and no live buffers after close, and
bytes received from the OS == bytes delivered.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import threading

import pytest

import loopmon
from loopmon.monitor.events import (
    EV_BUF_PIN, EV_BUF_RELEASE, EV_OP_CANCEL, EV_OP_END, EV_OP_INLINE, EV_OP_SUBMIT,
    FLAG_CANCEL_REQUESTED, FLAG_DISCARDED, FLAG_DRAINED_AT_CLOSE, FLAG_LATE_COMPLETION,
    KIND_ACCEPT, KIND_RECV, OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FAILED,
)

TIMEOUT = 60


def run(coro_fn, *, instrument=True, faults=(), loop_out=None):
    """Run ``coro_fn(loop)`` on a fresh loopmon loop; close it; return (result, monitor)."""
    loop = loopmon.new_event_loop(instrument=instrument, faults=faults)
    if loop_out is not None:
        loop_out.append(loop)
    try:
        result = loop.run_until_complete(asyncio.wait_for(coro_fn(loop), TIMEOUT))
    finally:
        loop.close()
    return result, loop.monitor


def assert_clean(mon, *, unread=0):
    snap = mon.snapshot()
    assert snap.closed
    assert snap.ops_outstanding == 0, mon.outstanding()
    assert snap.buffers_live == 0 and snap.buffer_bytes_live == 0, mon.live_buffers()
    assert snap.bytes_received == snap.bytes_delivered + unread, snap
    assert snap.bytes_discarded == 0
    assert snap.instrumentation_errors == 0, snap.last_instrumentation_error
    return snap


async def _echo_server(loop):
    async def handler(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(handler, "127.0.0.1", 0)


def test_echo_counts_and_close_invariants():
    n_conns, n_msgs, size = 5, 50, 1024

    async def main(loop):
        server = await _echo_server(loop)
        port = server.sockets[0].getsockname()[1]

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(n_msgs):
                writer.write(bytes([i % 256]) * size)
                assert await reader.readexactly(size) == bytes([i % 256]) * size
            writer.close()
            await writer.wait_closed()
        await asyncio.gather(*(client() for _ in range(n_conns)))
        server.close()
        await server.wait_closed()

    _, mon = run(main)
    events = mon.drain()        # readable after close: the whole story, drained-at-close included
    snap = assert_clean(mon)
    total = n_conns * n_msgs * size
    # client and server each receive and each send every byte once
    assert snap.bytes_received == 2 * total
    assert snap.bytes_sent == 2 * total
    assert snap.ops_submitted == snap.ops_completed + snap.ops_cancelled + snap.ops_failed
    assert snap.ops_inline > 0                       # sends complete inside their submission
    assert snap.ops_submitted > snap.ops_inline      # receives wait for the peer
    codes = {e[1] for e in events}
    assert {EV_OP_INLINE, EV_OP_SUBMIT, EV_OP_END, EV_BUF_PIN, EV_BUF_RELEASE} <= codes
    assert snap.events_dropped == 0
    # each pending op: submit ... end, in order; each pinned buffer released
    submits = {e[3] for e in events if e[1] == EV_OP_SUBMIT}
    ends = {e[3] for e in events if e[1] == EV_OP_END}
    assert submits == ends
    pins = {e[3] for e in events if e[1] == EV_BUF_PIN}
    releases = {e[3] for e in events if e[1] == EV_BUF_RELEASE}
    assert pins == releases


def test_large_transfer_checksums_and_received_equals_delivered():
    total = 64 * 1024 * 1024
    chunk = os.urandom(1 << 20)

    async def main(loop):
        got = hashlib.sha256()
        received = 0
        done = loop.create_future()

        async def sink(reader, writer):
            nonlocal received
            while data := await reader.read(1 << 18):
                got.update(data)
                received += len(data)
            writer.write(b"done")
            await writer.drain()
            writer.close()
            done.set_result(None)

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = hashlib.sha256()
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            sent.update(chunk)
            await writer.drain()
        writer.write_eof()
        assert await reader.read() == b"done"
        await done
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert received == total
        return sent.hexdigest(), got.hexdigest()

    (sent, got), mon = run(main)
    assert sent == got
    snap = assert_clean(mon)
    assert snap.bytes_received == total + 4
    assert snap.bytes_sent == total + 4


async def _pair(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_cancel_in_flight_sock_recv_is_cancel_then_end():
    async def main(loop):
        a, b = await _pair(loop)
        mon = loop.monitor
        task = loop.create_task(loop.sock_recv(a, 1000))
        await asyncio.sleep(0.05)
        [op] = mon.outstanding()
        assert op.kind == "recv" and op.buffer_size == 1000 and not op.cancel_requested
        task.cancel()
        # a cancel is only a request: the op is still in flight until its completion
        [op] = mon.outstanding()
        assert op.cancel_requested
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)
        assert mon.outstanding() == []
        # the data sent afterwards is not lost: the next receive gets it
        b.send(b"after")
        assert await loop.sock_recv(a, 100) == b"after"
        a.close()
        b.close()
        return mon.drain()

    events, mon = run(main)
    assert_clean(mon)
    submit = next(e for e in events if e[1] == EV_OP_SUBMIT and e[4] == KIND_RECV)
    op_id = submit[3]
    mine = [e for e in events if e[1] in (EV_OP_SUBMIT, EV_OP_CANCEL, EV_OP_END) and e[3] == op_id]
    assert [e[1] for e in mine] == [EV_OP_SUBMIT, EV_OP_CANCEL, EV_OP_END]
    end = mine[-1]
    assert end[4] == OUTCOME_CANCELLED and end[7] & FLAG_CANCEL_REQUESTED
    assert not end[7] & FLAG_DISCARDED
    assert mon.snapshot().ops_cancelled == 1


def test_cancel_in_flight_sock_accept():
    async def main(loop):
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        task = loop.create_task(loop.sock_accept(lsock))
        await asyncio.sleep(0.05)
        assert [o.kind for o in loop.monitor.outstanding()] == ["accept"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)
        assert loop.monitor.outstanding() == []
        # the listener still works after the cancelled accept
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, lsock.getsockname())
        conn, _ = await loop.sock_accept(lsock)
        for s in (conn, c, lsock):
            s.close()
        return loop.monitor.drain()

    events, mon = run(main)
    assert_clean(mon)
    accept_ids = [e[3] for e in events if e[1] == EV_OP_SUBMIT and e[4] == KIND_ACCEPT]
    assert accept_ids
    seq = [e[1] for e in events if e[1] in (EV_OP_SUBMIT, EV_OP_CANCEL, EV_OP_END)
           and e[3] == accept_ids[0]]
    assert seq == [EV_OP_SUBMIT, EV_OP_CANCEL, EV_OP_END]


def test_monitor_readable_after_close_with_ops_in_flight():
    """Ops still pending when the loop closes end as drained-at-close."""
    keep = []

    async def main(loop):
        a, b = await _pair(loop)
        keep.extend((a, b))
        loop.create_task(loop.sock_recv(a, 4096))
        await asyncio.sleep(0.05)
        assert loop.monitor.snapshot().ops_outstanding == 1
        assert loop.monitor.snapshot().buffer_bytes_live == 4096

    _, mon = run(main)
    for s in keep:
        s.close()
    snap = mon.snapshot()
    assert snap.closed and snap.ops_outstanding == 0 and snap.buffers_live == 0
    ends = [e for e in mon.drain() if e[1] == EV_OP_END]
    assert ends and ends[-1][7] & FLAG_DRAINED_AT_CLOSE


def test_sock_methods_count_delivered_and_udp():
    async def main(loop):
        a, b = await _pair(loop)
        await loop.sock_sendall(b, b"x" * 5000)
        got = b""
        while len(got) < 5000:
            got += await loop.sock_recv(a, 5000 - len(got))
        buf = bytearray(100)
        await loop.sock_sendall(b, b"y" * 100)
        n = 0
        while n < 100:
            n += await loop.sock_recv_into(a, memoryview(buf)[n:])
        a.close()
        b.close()
        u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for u in (u1, u2):
            u.bind(("127.0.0.1", 0))
            u.setblocking(False)
        await loop.sock_sendto(u1, b"dgram", u2.getsockname())
        data, addr = await loop.sock_recvfrom(u2, 100)
        assert data == b"dgram" and addr == u1.getsockname()
        await loop.sock_sendto(u1, b"dgram2", u2.getsockname())
        buf2 = bytearray(50)
        n2, addr2 = await loop.sock_recvfrom_into(u2, buf2)
        assert bytes(buf2[:n2]) == b"dgram2"
        u1.close()
        u2.close()

    _, mon = run(main)
    snap = assert_clean(mon)
    assert snap.bytes_received == 5000 + 100 + 5 + 6


def test_datagram_endpoint_counts_delivered():
    async def main(loop):
        got = []
        done = loop.create_future()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.append(data)
                if len(got) == 20:
                    done.set_result(None)

        rt, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
        st, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rt.get_extra_info("sockname"))
        for i in range(20):
            st.sendto(b"d" * (i + 1))
            await asyncio.sleep(0)
        await done
        st.close()
        rt.close()
        await asyncio.sleep(0.01)
        return sum(len(g) for g in got)

    n, mon = run(main)
    snap = assert_clean(mon)
    assert n == snap.bytes_received == sum(range(1, 21))


def test_self_pipe_is_not_recorded():
    async def main(loop):
        mon = loop.monitor
        before = mon.snapshot().ops_submitted
        done = loop.create_future()
        threads = [threading.Thread(target=loop.call_soon_threadsafe,
                                    args=(lambda: None,)) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        loop.call_soon_threadsafe(done.set_result, 1)
        await done
        await asyncio.sleep(0.05)
        assert mon.snapshot().ops_submitted == before
        fd = loop._ssock.fileno()
        assert all(e[5] != fd for e in mon.drain() if e[1] in (EV_OP_SUBMIT, EV_OP_INLINE))

    run(main)


def test_loop_lag_is_recorded_while_running():
    async def main(loop):
        await asyncio.sleep(0.2)
        import time
        time.sleep(0.15)                 # block the loop: the lag timer fires late
        await asyncio.sleep(0.1)

    _, mon = run(main)
    assert mon.lag_samples()
    assert mon.snapshot().loop_lag_max >= 0.05


def test_bare_loop_has_no_monitor_and_works():
    async def main(loop):
        assert loop.monitor is None
        a, b = await _pair(loop)
        await loop.sock_sendall(a, b"hi")
        assert await loop.sock_recv(b, 10) == b"hi"
        a.close()
        b.close()
        return "ok"

    assert run(main, instrument=False) == ("ok", None)


def test_runner_and_loop_factory():
    async def main():
        return asyncio.get_running_loop()

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loopmon.new_event_loop) as runner:
            loop = runner.run(main())
            assert isinstance(loop, loopmon.ProactorEventLoop) and loop.monitor is not None
        assert loop.is_closed() and loop.monitor.snapshot().closed
    if sys.version_info >= (3, 12):
        loop = asyncio.run(main(), loop_factory=loopmon.new_event_loop)
        assert isinstance(loop, loopmon.ProactorEventLoop)


def test_policy_install():
    old = asyncio.get_event_loop_policy()
    try:
        loopmon.install()
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, loopmon.ProactorEventLoop)
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(old)


# ------------------------------------------------------------------ faults
def test_faults_off_by_default_and_validated(monkeypatch):
    monkeypatch.delenv("LOOPMON_FAULTS", raising=False)
    loop = loopmon.new_event_loop()
    try:
        assert loop._proactor.faults == frozenset()
    finally:
        loop.close()
    with pytest.raises(ValueError):
        loopmon.new_event_loop(faults=["no-such-fault"])
    monkeypatch.setenv("LOOPMON_FAULTS", "cancel-drops-data, send-keeps-buffer")
    loop = loopmon.new_event_loop()
    try:
        assert loop._proactor.faults == {"cancel-drops-data", "send-keeps-buffer"}
    finally:
        loop.close()
    monkeypatch.setenv("LOOPMON_FAULTS", "bogus")
    with pytest.raises(ValueError):
        loopmon.new_event_loop()


def _cancel_with_data_ready(loop):
    """A pending sock_recv is cancelled while its socket already holds data.

    Returns ``(raw, next_recv)``: what a raw ``recv`` on the socket finds right after the
    cancel (outside the loop), then what the loop's next ``sock_recv`` gets.
    """
    async def main(loop):
        a, b = await _pair(loop)
        task = loop.create_task(loop.sock_recv(a, 4096))
        await asyncio.sleep(0.05)
        assert loop.monitor.snapshot().ops_outstanding == 1
        b.send(b"z" * 176)      # the kernel has the data; the loop has not looked yet
        task.cancel()           # ...and the receive is cancelled: the bpo-33694 window
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.02)
        a.setblocking(False)
        try:
            raw = a.recv(4096)
        except BlockingIOError:
            raw = b""
        b.send(b"!")            # so the next receive never waits forever
        next_recv = await loop.sock_recv(a, 4096)
        a.close()
        b.close()
        return raw, next_recv
    return main


@pytest.mark.parametrize("fault", [False, True])
def test_cancel_drops_data_signature(fault, monkeypatch):
    """The bpo-33694 signature on whichever backend runs (``LOOPMON_BACKEND``).

    Both backends, with the fault: the 176 bytes count as received, never delivered, and
    as discarded; the op's end carries the cancel request, the bytes and ``FLAG_DISCARDED``.
    How the op ends differs because the mechanism does (``loopmon/backends/faults.py``, the
    io_uring essay): the selector backend *emulates* the loss -- at the cancelled op's end it
    reads the waiting bytes and drops them, ending the op ``OUTCOME_CANCELLED``; on io_uring
    the kernel really completed the receive before the cancel got there (the data arrival
    runs the receive on the way back from ``b.send``), so the op ends ``OUTCOME_COMPLETED``
    with ``FLAG_LATE_COMPLETION`` and the fault only turns off the carry-over.
    Without the fault no byte is lost on either: the selector backend left them in the
    socket (a raw ``recv`` finds them), io_uring had already taken them from the socket and
    carries them over to the loop's next receive.
    """
    monkeypatch.delenv("LOOPMON_FAULTS", raising=False)
    faults = ["cancel-drops-data"] if fault else []
    (raw, next_recv), mon = run(_cancel_with_data_ready(None), faults=faults)
    backend = mon.backend
    assert backend in ("selector", "io_uring")
    snap = mon.snapshot()
    assert snap.ops_outstanding == 0 and snap.buffers_live == 0
    ends = [e for e in mon.drain() if e[1] == EV_OP_END]
    if fault:
        assert raw == b"" and next_recv == b"!"     # the data is gone
        assert snap.bytes_discarded == 176
        assert snap.bytes_received - snap.bytes_delivered == 176
        [dropped] = [e for e in ends if e[7] & FLAG_DISCARDED]
        assert dropped[5] == 176 and dropped[7] & FLAG_CANCEL_REQUESTED
        if backend == "selector":
            assert dropped[4] == OUTCOME_CANCELLED
            assert not dropped[7] & FLAG_LATE_COMPLETION
        else:
            assert dropped[4] == OUTCOME_COMPLETED
            assert dropped[7] & FLAG_LATE_COMPLETION
    else:
        assert snap.bytes_discarded == 0
        assert snap.bytes_received == snap.bytes_delivered
        assert not any(e[7] & FLAG_DISCARDED for e in ends)
        if backend == "selector":               # still in the socket for the next reader
            assert raw == b"z" * 176 and next_recv == b"!"
        else:                                   # carried over to the loop's next receive
            assert raw == b"" and next_recv == b"z" * 176


@pytest.mark.parametrize("fault", [False, True])
def test_send_keeps_buffer_signature(fault, monkeypatch):
    monkeypatch.delenv("LOOPMON_FAULTS", raising=False)
    faults = ["send-keeps-buffer"] if fault else []
    held = []

    async def main(loop):
        a, b = await _pair(loop)
        b.close()                               # the peer is gone: send fails at submission
        for _ in range(3):
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                await loop.sock_sendall(a, b"q" * 10000)
        mon = loop.monitor
        held.append((mon.snapshot(), mon.live_buffers(), list(loop._proactor._leaked)))
        a.close()

    _, mon = run(main, faults=faults)
    snap, bufs, leaked = held[0]
    assert snap.ops_failed == 3 and snap.ops_outstanding == 0
    if fault:
        assert snap.buffers_live == 3 and snap.buffer_bytes_live == 30000
        assert all(b.held_after_op_end > 0 or b.size == 10000 for b in bufs)
        assert len(leaked) == 3                 # real references: the memory is really held
    else:
        assert snap.buffers_live == 0 and leaked == []
    # after close everything is released either way
    assert mon.snapshot().buffers_live == 0


def test_monitor_exception_is_swallowed_and_counted():
    """The op table failing on insert (as on MemoryError): every pending op's record
    fails, and the program does not notice."""
    async def main(loop):
        loop.monitor._fail_op_table = 10 ** 9
        a, b = await _pair(loop)
        await loop.sock_sendall(a, b"still works")
        assert await loop.sock_recv(b, 100) == b"still works"
        t = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.02)
        await loop.sock_sendall(a, b"again")
        assert await t == b"again"
        a.close()
        b.close()

    _, mon = run(main)
    snap = mon.snapshot()
    assert snap.instrumentation_errors > 0
    assert "op table insert failed" in snap.last_instrumentation_error


def test_bytes_held_while_paused_are_delivered_on_resume():
    """Delivered is counted at hand-over: while reading is paused, received > delivered."""
    async def main(loop):
        got = bytearray()

        class P(asyncio.Protocol):
            def data_received(self, data):
                got.extend(data)

        a, b = socket.socketpair()
        tr, _ = await loop.create_connection(P, sock=a)
        b.setblocking(False)
        await loop.sock_sendall(b, b"1" * 1000)
        while len(got) < 1000:
            await asyncio.sleep(0.01)
        tr.pause_reading()
        await loop.sock_sendall(b, b"2" * 3000)        # the read in flight completes, held
        for _ in range(100):
            snap = loop.monitor.snapshot()
            if snap.bytes_received > snap.bytes_delivered:
                break
            await asyncio.sleep(0.01)
        assert snap.bytes_received - snap.bytes_delivered > 0
        assert len(got) == 1000                         # nothing handed over while paused
        tr.resume_reading()
        while len(got) < 4000:
            await asyncio.sleep(0.01)
        assert bytes(got) == b"1" * 1000 + b"2" * 3000
        tr.close()
        b.close()
        await asyncio.sleep(0.01)

    _, mon = run(main)
    assert_clean(mon)


def test_outstanding_ops_show_their_connections_peer():
    seen = {}

    async def main(loop):
        got = asyncio.Event()

        async def handler(reader, writer):
            got.set()
            await reader.read(100)          # stays pending: the client sends nothing yet
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await got.wait()
        await asyncio.sleep(0.05)
        client_port = writer.get_extra_info("sockname")[1]
        peers = {op.peer for op in loop.monitor.outstanding() if op.kind == "recv_into"}
        seen["peers"] = peers
        seen["expected"] = {f"127.0.0.1:{port}", f"127.0.0.1:{client_port}"}
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        seen["left"] = dict(loop.monitor._peers)

    run(main)
    assert seen["peers"] == seen["expected"]      # both ends' pending reads, each its peer
    assert seen["left"] == {}                     # forgotten when the connections closed
