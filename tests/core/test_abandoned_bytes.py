"""Bytes a paused transport still holds when its connection is lost are *abandoned*, not lost.

The program chose to close a connection it had paused; the loop delivered nothing wrongly.
The monitor counts them apart so received == delivered + discarded + abandoned, and the
lost-data detector does not raise on an ordinary close.
"""
from __future__ import annotations

import asyncio

import loopmon


def test_close_while_paused_counts_the_held_bytes_as_abandoned():
    loop = loopmon.new_event_loop()
    got = asyncio.Event()
    received = bytearray()
    readers = []

    class PausingReader(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            readers.append(self)

        def data_received(self, data):
            received.extend(data)
            self.transport.pause_reading()     # hold everything after the first chunk
            got.set()

    async def main():
        server = await loop.create_server(PausingReader, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a" * 1000)
        await got.wait()
        writer.write(b"b" * 5000)              # arrives while the server side is paused
        await writer.drain()
        for _ in range(500):                    # the in-flight receive completes into the backlog
            if loop.monitor.snapshot().bytes_received >= 6000:
                break
            await asyncio.sleep(0.01)
        readers[0].transport.close()            # the program gives up on the paused connection
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.close()
    snap = loop.monitor.snapshot()
    assert bytes(received[:1000]) == b"a" * 1000
    assert snap.bytes_abandoned > 0
    assert snap.bytes_received == snap.bytes_delivered + snap.bytes_discarded + snap.bytes_abandoned
    assert snap.bytes_discarded == 0
