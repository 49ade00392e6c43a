"""The Windows IOCP wrapper, checked here against a fake proactor (no Windows on this machine).

``FakeIocpProactor`` has ``IocpProactor``'s method set and returns futures that the test
completes by hand -- like completion packets arriving -- so every recording path runs:
pending ops, completions with bytes, failures at submission and later, cancel requests,
the self-pipe exemption and drain at close.
"""
from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from loopmon.backends import iocp
from loopmon.backends.iocp import InstrumentedIocpProactor
from loopmon.monitor import Monitor
from loopmon.monitor.events import (
    EV_OP_CANCEL, EV_OP_END, EV_OP_SUBMIT, FLAG_CANCEL_REQUESTED, OUTCOME_CANCELLED,
    OUTCOME_COMPLETED, OUTCOME_FAILED,
)


class _OverlappedLikeFuture(asyncio.Future):
    """Like ``_OverlappedFuture``: a Python subclass, so ``cancel`` can be wrapped per op."""


class FakeIocpProactor:
    def __init__(self):
        self.loop = None
        self.submitted = []
        self.closed = False
        self.fail_next = None

    def set_loop(self, loop):
        self.loop = loop

    def select(self, timeout=None):
        return []

    def close(self):
        self.closed = True
        for fut in self.submitted:
            fut.cancel()

    def _op(self, *args):
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        fut = _OverlappedLikeFuture(loop=self.loop)
        self.submitted.append(fut)
        return fut

    def recv(self, conn, nbytes, flags=0):
        return self._op()

    def recv_into(self, conn, buf, flags=0):
        return self._op()

    def recvfrom(self, conn, nbytes, flags=0):
        return self._op()

    def recvfrom_into(self, conn, buf, flags=0):
        self.last_buf_len = len(buf)
        return self._op()

    def send(self, conn, buf, flags=0):
        return self._op()

    def sendto(self, conn, buf, flags=0, addr=None):
        return self._op()

    def sendfile(self, sock, file, offset, count):
        return self._op()

    def accept(self, listener):
        return self._op()

    def connect(self, conn, address):
        return self._op()

    def accept_pipe(self, pipe):
        return self._op()

    def wait_for_handle(self, handle, timeout=None):
        return self._op()

    def _unregister(self, ov):
        self.unregistered = ov


@pytest.fixture
def setup():
    loop = asyncio.new_event_loop()
    inner = FakeIocpProactor()
    mon = Monitor(backend="iocp")
    proactor = InstrumentedIocpProactor(inner, mon)
    proactor.set_loop(loop)
    a, b = socket.socketpair()
    yield loop, inner, proactor, mon, a
    a.close()
    b.close()
    loop.close()


def _settle(loop):
    loop.run_until_complete(asyncio.sleep(0))


def test_pending_recv_then_completion(setup):
    loop, inner, proactor, mon, sock = setup
    fut = proactor.recv(sock, 4096)
    [op] = mon.outstanding()
    assert op.kind == "recv" and op.requested == 4096 and op.buffer_size == 4096
    assert mon.snapshot().buffer_bytes_live == 4096
    fut.set_result(b"x" * 100)
    _settle(loop)
    snap = mon.snapshot()
    assert snap.ops_outstanding == 0 and snap.buffers_live == 0
    assert snap.bytes_received == 100 and snap.ops_completed == 1


@pytest.mark.parametrize("method,args,result,nbytes,counter", [
    ("recv_into", (bytearray(50),), 30, 30, "bytes_received"),
    ("recvfrom", (64,), (b"abc", ("h", 1)), 3, "bytes_received"),
    ("recvfrom_into", (bytearray(64),), (7, ("h", 1)), 7, "bytes_received"),
    ("send", (b"hello",), 5, 5, "bytes_sent"),
    ("sendto", (b"hello", 0, ("h", 1)), 5, 5, "bytes_sent"),
    ("accept", (), (None, None), 0, None),
    ("connect", (("127.0.0.1", 1),), None, 0, None),
])
def test_each_kind_records_its_bytes(setup, method, args, result, nbytes, counter):
    loop, inner, proactor, mon, sock = setup
    fut = getattr(proactor, method)(sock, *args)
    assert mon.snapshot().ops_outstanding == 1
    fut.set_result(result)
    _settle(loop)
    snap = mon.snapshot()
    assert snap.ops_outstanding == 0 and snap.ops_completed == 1
    if counter:
        assert getattr(snap, counter) == nbytes


def test_recvfrom_into_nbytes_trims_the_buffer(setup):
    loop, inner, proactor, mon, sock = setup
    proactor.recvfrom_into(sock, bytearray(100), 10)
    assert inner.last_buf_len == 10
    assert mon.outstanding()[0].requested == 10


def test_cancel_is_recorded_as_request_then_end(setup):
    loop, inner, proactor, mon, sock = setup
    fut = proactor.recv(sock, 10)
    assert fut.cancel()
    assert mon.outstanding()[0].cancel_requested or mon.snapshot().cancel_requests == 1
    _settle(loop)
    events = mon.drain()
    codes = [e[1] for e in events if e[1] in (EV_OP_SUBMIT, EV_OP_CANCEL, EV_OP_END)]
    assert codes == [EV_OP_SUBMIT, EV_OP_CANCEL, EV_OP_END]
    end = [e for e in events if e[1] == EV_OP_END][0]
    assert end[4] == OUTCOME_CANCELLED and end[7] & FLAG_CANCEL_REQUESTED
    assert mon.snapshot().ops_cancelled == 1


def test_failure_later_and_at_submission(setup):
    loop, inner, proactor, mon, sock = setup
    fut = proactor.send(sock, b"abc")
    fut.set_exception(ConnectionResetError("reset"))
    _settle(loop)
    ends = [e for e in mon.drain() if e[1] == EV_OP_END]
    assert ends[0][4] == OUTCOME_FAILED and ends[0][6] == "ConnectionResetError"
    inner.fail_next = BrokenPipeError("at submit")
    with pytest.raises(BrokenPipeError):
        proactor.send(sock, b"abc")
    snap = mon.snapshot()
    assert snap.ops_failed == 2 and snap.ops_outstanding == 0 and snap.buffers_live == 0


def test_self_pipe_reads_are_not_recorded(setup):
    loop, inner, proactor, mon, sock = setup
    loop_like = type("L", (), {"_ssock": sock})()
    proactor._loop = loop_like
    proactor.recv(sock, 4096)
    assert mon.snapshot().ops_submitted == 0


def test_close_drains_and_delegates(setup):
    loop, inner, proactor, mon, sock = setup
    proactor.recv(sock, 10)
    proactor.accept(sock)
    assert mon.snapshot().ops_outstanding == 2
    proactor.close()
    assert inner.closed
    snap = mon.snapshot()
    assert snap.closed and snap.ops_outstanding == 0 and snap.buffers_live == 0
    proactor._unregister("ov")          # other IocpProactor methods pass through
    assert inner.unregistered == "ov"


def test_bare_wrapper_records_nothing(setup):
    loop, inner, _, _, sock = setup
    bare = InstrumentedIocpProactor(inner, None)
    bare.set_loop(loop)
    fut = bare.recv(sock, 10)
    fut.set_result(b"")
    bare.close()


def test_faults_are_refused_and_windows_modules_not_imported():
    assert "asyncio.windows_events" not in sys.modules or sys.platform == "win32"
    with pytest.raises(ValueError):
        iocp.new_iocp_event_loop(faults=["cancel-drops-data"])
