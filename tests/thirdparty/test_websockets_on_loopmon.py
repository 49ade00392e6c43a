"""The ``websockets`` library (asyncio implementation): server and client on the same loop,
text and binary echo, a large fragmented message, ping/pong, close codes, many clients."""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

websockets = pytest.importorskip("websockets")
try:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
except ImportError:                      # websockets < 13: the legacy API
    from websockets import connect, serve  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(120)


async def _echo(ws):
    async for msg in ws:
        if isinstance(msg, bytes):
            await ws.send(hashlib.sha256(msg).digest())
        elif msg == "close-please":
            await ws.close(code=4001, reason="asked to")
        else:
            await ws.send(msg[::-1])


def test_websockets_exchange(aloop, arun):
    async def main():
        async with serve(_echo, "127.0.0.1", 0, max_size=16 * 1024 * 1024) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            uri = f"ws://127.0.0.1:{port}"
            async with connect(uri, max_size=16 * 1024 * 1024) as ws:
                for i in range(100):
                    await ws.send(f"message {i}")
                    assert await ws.recv() == f"message {i}"[::-1]
                big = os.urandom(8 * 1024 * 1024)
                await ws.send(big)
                assert await ws.recv() == hashlib.sha256(big).digest()
                pong = await ws.ping()
                await asyncio.wait_for(pong, 30)
                await ws.send("close-please")
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 4001

            async def client(i):
                async with connect(uri) as ws:
                    for j in range(10):
                        await ws.send(f"{i}:{j}")
                        assert await ws.recv() == f"{i}:{j}"[::-1]
            await asyncio.gather(*(client(i) for i in range(30)))
    arun(main(), timeout=110)
