"""Ops of bare ``sock_*`` calls show their connection's peer, and never a dead one's.

Transports tell the monitor their peer.  A socket used with the loop's ``sock_*`` calls
gets its peer from the selector backend's fd table (``loopmon.backends.selector_ops``):
whenever the table meets a new object on an fd, and when a connect completes.  The trap
tested last: fd numbers come back after a close, and a ``sock_*`` socket is closed without
telling anybody, so the peer of a closed connection must not show beside the ops of the
next socket (or pipe) on its number.

Other backends (io_uring) have no per-fd table to take a peer back, so they set none for
``sock_*`` sockets: there the tests check that nothing stale shows (``_expect``).

Real sockets on loopback; a pending op is made by receiving where nobody has sent yet.
"""
from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest

import loopmon

TIMEOUT = 60


def _expect(loop, peer):
    """What a ``sock_*`` socket's pending op shows as its peer on ``loop``'s backend."""
    return peer if loop.monitor.backend == "selector" else None


def run(coro_fn):
    loop = loopmon.new_event_loop()
    try:
        result = loop.run_until_complete(asyncio.wait_for(coro_fn(loop), TIMEOUT))
    finally:
        loop.close()
    snap = loop.monitor.snapshot()
    assert snap.ops_outstanding == 0 and snap.buffers_live == 0
    assert snap.instrumentation_errors == 0, snap.last_instrumentation_error
    return result


async def _pending_peers(loop, *socks_and_coros):
    """Start the receives, let them go pending, return ``{fd: peer}`` of the outstanding ops."""
    tasks = [loop.create_task(coro) for coro in socks_and_coros]
    await asyncio.sleep(0.05)
    peers = {op.fd: op.peer for op in loop.monitor.outstanding()}
    return tasks, peers


async def _finish(tasks):
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.01)       # the cancelled completions end on the next pass


async def _connected_pair(loop, lsock):
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, lsock.getsockname())
    conn, addr = await loop.sock_accept(lsock)
    return client, conn, addr


def test_pending_sock_recv_on_accepted_and_connected_sockets_shows_their_peers():
    async def main(loop):
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            lsock.setblocking(False)
            port = lsock.getsockname()[1]
            client, conn, addr = await _connected_pair(loop, lsock)
            client_port = client.getsockname()[1]
            assert addr == ("127.0.0.1", client_port)
            tasks, peers = await _pending_peers(
                loop, loop.sock_recv(conn, 100), loop.sock_recv(client, 100))
            assert peers == {conn.fileno(): _expect(loop, f"127.0.0.1:{client_port}"),
                             client.fileno(): _expect(loop, f"127.0.0.1:{port}")}
            # and the receives still work: data completes them
            client.send(b"ping")
            assert await tasks[0] == b"ping"
            await _finish(tasks[1:])
            client.close()
            conn.close()

    run(main)


def test_pending_connect_shows_no_peer_until_connected_then_its_peer():
    """A connect that completes later (here: to a listener whose backlog is full)."""
    async def main(loop):
        with socket.create_server(("127.0.0.1", 0), backlog=0) as lsock:
            lsock.setblocking(False)
            port = lsock.getsockname()[1]
            fillers = []
            pending = None
            for _ in range(64):             # fill the accept queue until a connect would block
                s = socket.socket()
                s.setblocking(False)
                t = loop.create_task(loop.sock_connect(s, ("127.0.0.1", port)))
                await asyncio.sleep(0.01)
                fillers.append((s, t))
                if not t.done():
                    pending = (s, t)
                    break
            if pending is None:
                pytest.skip("no connect stayed pending on this kernel")
            s, t = pending
            peers = {op.fd: op.peer for op in loop.monitor.outstanding()}
            assert peers[s.fileno()] is None        # not connected yet: nobody to show
            accepted = []
            while not t.done():                     # make room: the connect completes
                try:
                    accepted.append(lsock.accept()[0])
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            await t
            tasks, peers = await _pending_peers(loop, loop.sock_recv(s, 10))
            assert peers == {s.fileno(): _expect(loop, f"127.0.0.1:{port}")}
            await _finish(tasks)
            for sock in [f[0] for f in fillers] + accepted:
                sock.close()

    run(main)


def test_listener_and_unconnected_udp_show_no_peer():
    async def main(loop):
        with socket.create_server(("127.0.0.1", 0)) as lsock, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            lsock.setblocking(False)
            udp.setblocking(False)
            udp.bind(("127.0.0.1", 0))
            tasks, peers = await _pending_peers(
                loop, loop.sock_accept(lsock), loop.sock_recvfrom(udp, 100))
            assert peers == {lsock.fileno(): None, udp.fileno(): None}
            await _finish(tasks)

    run(main)


def test_unix_socket_peers():
    """The connecting side shows the server's path; the accepted side has no name to show."""
    async def main(loop):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.sock")
            with socket.socket(socket.AF_UNIX) as lsock, socket.socket(socket.AF_UNIX) as client:
                lsock.bind(path)
                lsock.listen()
                lsock.setblocking(False)
                client.setblocking(False)
                await loop.sock_connect(client, path)
                conn, _ = await loop.sock_accept(lsock)
                with conn:
                    tasks, peers = await _pending_peers(
                        loop, loop.sock_recv(client, 10), loop.sock_recv(conn, 10))
                    assert peers == {client.fileno(): _expect(loop, path), conn.fileno(): None}
                    await _finish(tasks)

    run(main)


def _socket_on_fd(fd, make):
    """A new object from ``make()`` that got fd number ``fd`` (the lowest free one wins)."""
    spare = []
    obj = make()
    while obj.fileno() != fd:
        assert obj.fileno() < fd, "fd numbers are handed out lowest first"
        spare.append(obj)
        obj = make()
    for s in spare:
        s.close()
    return obj


@pytest.mark.parametrize("went_pending_before", [False, True], ids=["inline-only", "pended"])
def test_a_closed_sock_connections_peer_does_not_stick_to_its_fd_number(went_pending_before):
    """The socket that inherits the number shows its own peer (or none), never the old one.

    ``went_pending_before``: whether the closed socket had a pending op (the selector backend
    then holds a record for its fd, which the new object replaces) or only inline ones.
    """
    async def main(loop):
        with socket.create_server(("127.0.0.1", 0)) as lsock, \
                socket.create_server(("127.0.0.1", 0)) as other_server:
            lsock.setblocking(False)
            client, conn, addr = await _connected_pair(loop, lsock)
            fd = conn.fileno()
            if went_pending_before:
                tasks, peers = await _pending_peers(loop, loop.sock_recv(conn, 10))
                assert peers == {fd: _expect(loop, f"127.0.0.1:{addr[1]}")}
                client.send(b"x")
                assert await tasks[0] == b"x"
            conn.close()                                # nobody tells the loop or the monitor

            # 1. unconnected UDP on the same number: no peer at all
            udp = _socket_on_fd(fd, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            udp.setblocking(False)
            udp.bind(("127.0.0.1", 0))
            tasks, peers = await _pending_peers(loop, loop.sock_recvfrom(udp, 100))
            assert peers == {fd: None}
            await _finish(tasks)
            udp.close()

            # 2. a socket connected elsewhere, by a blocking connect: its own peer
            other_port = other_server.getsockname()[1]

            def connected():
                s = socket.create_connection(("127.0.0.1", other_port))
                s.setblocking(False)
                return s
            tcp = _socket_on_fd(fd, connected)
            tasks, peers = await _pending_peers(loop, loop.sock_recv(tcp, 10))
            assert peers == {fd: _expect(loop, f"127.0.0.1:{other_port}")}
            await _finish(tasks)
            tcp.close()
            client.close()

    run(main)


def test_pipe_on_a_reused_fd_number_shows_no_peer():
    async def main(loop):
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            lsock.setblocking(False)
            client, conn, _ = await _connected_pair(loop, lsock)
            fd = conn.fileno()
            conn.close()
            r, w = _socket_on_fd(fd, _PipeEnds)   # the read end gets the number
            transport, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r.fd, "rb", 0))
            await asyncio.sleep(0.05)
            peers = {op.fd: op.peer for op in loop.monitor.outstanding()}
            transport.close()
            os.close(w)
            client.close()
            await asyncio.sleep(0.05)
            assert peers == {fd: None}

    run(main)


class _PipeEnds:
    """``os.pipe()`` with ``fileno()``/``close()`` for ``_socket_on_fd`` (unpacks as (r, w))."""

    def __init__(self) -> None:
        self.fd, self.w = os.pipe()

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.w)

    def __iter__(self):
        return iter((self, self.w))
