"""Datagram endpoints: echo, big datagrams, connected endpoints, error_received for ICMP
port-unreachable, argument errors, and close semantics."""
from __future__ import annotations

import asyncio
import os
import socket

import pytest

pytestmark = pytest.mark.timeout(120)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class Collector(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.errors: list[Exception] = []
        self.events: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def datagram_received(self, data, addr):
        assert isinstance(data, bytes)
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


def test_udp_echo_roundtrips(aloop, arun, quiescent):
    async def main():
        loop = asyncio.get_running_loop()
        stran, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        saddr = stran.get_extra_info("sockname")
        ctran, client = await loop.create_datagram_endpoint(Collector, remote_addr=saddr)
        assert ctran.get_extra_info("peername") == saddr
        for i in range(200):
            msg = b"datagram %d " % i + os.urandom(i)
            ctran.sendto(msg)
            data, addr = await asyncio.wait_for(client.queue.get(), 30)
            assert data == msg and addr == saddr
        assert ctran.get_write_buffer_size() == 0
        ctran.close()
        assert await asyncio.wait_for(client.lost, 30) is None
        assert client.events == ["made", "lost"]
        stran.close()
        await quiescent()
    arun(main())


def test_udp_large_datagram_and_unconnected_sendto(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        stran, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        saddr = stran.get_extra_info("sockname")
        ctran, client = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        assert ctran.get_extra_info("peername") is None
        big = os.urandom(60_000)
        ctran.sendto(big, saddr)
        data, addr = await asyncio.wait_for(client.queue.get(), 30)
        assert data == big and addr == saddr
        ctran.sendto(memoryview(b"view"), saddr)
        assert (await asyncio.wait_for(client.queue.get(), 30))[0] == b"view"
        ctran.close()
        stran.close()
        await asyncio.wait_for(client.lost, 30)
    arun(main())


def test_udp_error_received_on_port_unreachable(aloop, arun, quiescent):
    """A connected UDP socket sending to a closed port gets ECONNREFUSED (from ICMP) through
    error_received — and the endpoint keeps working."""
    async def main():
        loop = asyncio.get_running_loop()
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind(("127.0.0.1", 0))
        dead_addr = dead.getsockname()
        dead.close()
        ctran, client = await loop.create_datagram_endpoint(Collector, remote_addr=dead_addr)
        for _ in range(200):
            if client.errors:
                break
            ctran.sendto(b"anyone?")
            await asyncio.sleep(0.02)
        assert client.errors, "error_received was never called"
        assert all(isinstance(e, ConnectionRefusedError) for e in client.errors), client.errors
        assert not ctran.is_closing(), "an ICMP error must not close the endpoint"
        ctran.close()
        await asyncio.wait_for(client.lost, 30)
        await quiescent()
    arun(main())


def test_udp_argument_errors(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        stran, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        saddr = stran.get_extra_info("sockname")
        ctran, client = await loop.create_datagram_endpoint(Collector, remote_addr=saddr)
        with pytest.raises(TypeError):
            ctran.sendto("not bytes")
        with pytest.raises(ValueError):           # connected endpoint, other address
            ctran.sendto(b"x", ("127.0.0.1", saddr[1] + 1 if saddr[1] < 65535 else 1))
        ctran.sendto(b"x", saddr)                  # the connected address itself is fine
        assert (await asyncio.wait_for(client.queue.get(), 30))[0] == b"x"
        with pytest.raises(ValueError):
            await loop.create_datagram_endpoint(Collector)        # neither addr nor sock
        ctran.close()
        stran.close()
        await asyncio.wait_for(client.lost, 30)
    arun(main())


def test_udp_endpoint_from_existing_socket_and_abort(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        tran, proto = await loop.create_datagram_endpoint(Collector, sock=s)
        assert tran.get_extra_info("socket").getsockname() == s.getsockname()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(b"raw in", s.getsockname())
        data, addr = await asyncio.wait_for(proto.queue.get(), 30)
        assert data == b"raw in" and addr[1] == peer.getsockname()[1]
        tran.abort()
        assert await asyncio.wait_for(proto.lost, 30) is None
        peer.close()
    arun(main())


def test_udp_many_datagrams_burst(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        rtran, rx = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        rtran.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        raddr = rtran.get_extra_info("sockname")
        ttran, _ = await loop.create_datagram_endpoint(Collector, remote_addr=raddr)
        n = 300
        for i in range(n):
            ttran.sendto(i.to_bytes(4, "big") * 64)
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        seen = set()
        while len(seen) < n:
            data, _ = await asyncio.wait_for(rx.queue.get(), 30)
            assert data == data[:4] * 64
            seen.add(int.from_bytes(data[:4], "big"))
        ttran.close()
        rtran.close()
    arun(main())
