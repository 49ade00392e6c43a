"""A socket transport's persistent receive (``backends.stream_receive``) and its read loop.

The selector backend gives each socket transport one ``StreamReceive`` instead of a future
per chunk.  These tests pin what that must not change: one receive in flight at a time
(however often reading is resumed), a receive issued after the fd stopped being watched
still completes, a close while a receive is pending records a cancel and queues nothing,
``eof_received`` comes at most once even when reading is paused across EOF, and the
monitor's books balance (received == delivered, nothing outstanding after close).
"""
from __future__ import annotations

import asyncio
import socket

import pytest

import loopmon
from loopmon.backends.stream_receive import StreamReceive
from loopmon.monitor.events import EV_OP_CANCEL, EV_OP_END, EV_OP_SUBMIT


class Collect(asyncio.Protocol):
    def __init__(self):
        self.chunks: list = []
        self.eofs = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.chunks.append(bytes(data))

    def eof_received(self):
        self.eofs += 1
        return True                 # keep the transport open after EOF


@pytest.fixture(params=["bare", "instrumented"])
def loop(request):
    lp = loopmon.new_event_loop(instrument=request.param == "instrumented")
    if not hasattr(lp._proactor, "stream_receiver"):
        lp.close()
        pytest.skip("the backend has no persistent stream receive (LOOPMON_BACKEND=io_uring)")
    yield lp
    lp.close()


@pytest.fixture(params=["bare", "instrumented"])
def any_loop(request):
    """Any backend (LOOPMON_BACKEND): for what the transports do whatever reads for them."""
    lp = loopmon.new_event_loop(instrument=request.param == "instrumented")
    yield lp
    lp.close()


async def _connected(loop, protocol_factory=Collect):
    a, b = socket.socketpair()
    b.setblocking(False)
    transport, protocol = await loop.create_connection(protocol_factory, sock=a)
    await asyncio.sleep(0.01)
    return transport, protocol, b


def test_transport_reads_through_one_persistent_receiver(loop):
    async def main():
        transport, protocol, peer = await _connected(loop)
        receiver = transport._lm_receiver
        assert isinstance(receiver, StreamReceive) and transport._read_fut is receiver
        for i in range(20):
            peer.send(b"%d;" % i)
            await asyncio.sleep(0.002)
        assert b"".join(protocol.chunks) == b"".join(b"%d;" % i for i in range(20))
        assert transport._lm_receiver is receiver
        transport.close()
        peer.close()
        await asyncio.sleep(0.01)
    loop.run_until_complete(main())
    if loop.monitor is not None:
        snap = loop.monitor.snapshot()
        assert snap.bytes_received == snap.bytes_delivered > 0
        assert snap.ops_outstanding == 0 and snap.buffers_live == 0


def test_double_resume_keeps_one_receive_in_flight(loop):
    async def main():
        transport, protocol, peer = await _connected(loop)
        st = loop._proactor._fds[transport._sock.fileno()]
        for _ in range(3):          # resume twice before the queued _loop_reading runs
            transport.pause_reading()
            transport.resume_reading()
            transport.pause_reading()
            transport.resume_reading()
            await asyncio.sleep(0.01)
        assert list(st.readers) == [transport._lm_receiver]
        peer.send(b"once")
        await asyncio.sleep(0.01)
        assert protocol.chunks == [b"once"]
        transport.close()
        peer.close()
    loop.run_until_complete(main())


def test_receive_after_the_fd_stopped_being_watched(loop):
    """The 'drained' hint must not send a receive to wait on an fd nobody watches."""
    async def main():
        transport, protocol, peer = await _connected(loop)
        proactor = loop._proactor
        peer.send(b"first")
        await asyncio.sleep(0.01)
        st = proactor._fds[transport._sock.fileno()]
        transport.pause_reading()
        peer.send(b"second")        # completes the pending receive; nothing re-arms (paused)
        await asyncio.sleep(0.01)
        proactor._set_mask(st, 0)   # as select() does on readiness with nobody waiting
        assert not st.drained
        transport.resume_reading()
        peer.send(b"third")
        await asyncio.sleep(0.02)
        assert b"".join(protocol.chunks) == b"firstsecondthird"
        transport.close()
        peer.close()
    loop.run_until_complete(main())


def test_close_with_a_pending_receive_records_a_cancel(loop):
    async def main():
        transport, protocol, peer = await _connected(loop)
        receiver = transport._lm_receiver
        assert receiver._lm_backend is not None         # pending
        transport.close()
        assert receiver._lm_backend is None and receiver.nbytes == -1
        await asyncio.sleep(0.01)
        peer.close()
        return protocol
    protocol = loop.run_until_complete(main())
    assert protocol.chunks == []
    if loop.monitor is not None:
        events = loop.monitor.drain()
        codes = [ev[1] for ev in events]
        assert codes.count(EV_OP_SUBMIT) == 1 and codes.count(EV_OP_CANCEL) == 1
        assert codes.count(EV_OP_END) == 1
        assert loop.monitor.snapshot().ops_outstanding == 0


@pytest.mark.parametrize("buffered", [False, True])
def test_eof_received_once_when_paused_across_eof(any_loop, buffered):
    loop = any_loop

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.chunks, self.eofs, self.buf = [], 0, bytearray(100)

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, n):
            return self.buf

        def buffer_updated(self, n):
            self.chunks.append(bytes(self.buf[:n]))
            if len(self.chunks) == 2:       # pause half way through the chunk
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(0.02, self.transport.resume_reading)

        def eof_received(self):
            self.eofs += 1
            return True

    async def main():
        transport, protocol, peer = await _connected(loop, Buffered if buffered else Collect)
        if not buffered:
            transport.pause_reading()
        peer.send(b"x" * 1000)
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.03)
        if not buffered:
            transport.resume_reading()
            await asyncio.sleep(0.01)
            transport.pause_reading()
            transport.resume_reading()
        await asyncio.sleep(0.03)
        transport.close()
        peer.close()
        await asyncio.sleep(0.01)
        return protocol
    protocol = loop.run_until_complete(main())
    assert b"".join(protocol.chunks) == b"x" * 1000
    assert protocol.eofs == 1
