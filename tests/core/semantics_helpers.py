"""Socket and stream helpers the core semantics tests share (imported, not fixtures).

They build the scenery of a test -- an echo handler, a connected TCP pair, a bound UDP pair -- and
assert nothing about the loop beyond what setting up needs, so a test that uses them still owns
every assertion it makes.  All sockets come back non-blocking; the caller closes them.

Imported as a plain module: ``tests/core`` has no ``__init__.py``, so pytest (prepend import mode)
puts this directory on ``sys.path`` for the test files beside it.
"""
from __future__ import annotations

import asyncio
import socket


async def echo_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A ``start_server`` handler: echo every chunk until EOF, then close; a reset ends it quietly."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def listener() -> socket.socket:
    """A non-blocking TCP socket listening on 127.0.0.1 at a free port."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(50)
    lsock.setblocking(False)
    return lsock


async def connected_pair() -> tuple[socket.socket, socket.socket]:
    """(client, server-side conn), both non-blocking, connected through the loop's sock_* calls."""
    loop = asyncio.get_running_loop()
    lsock = listener()
    client = socket.socket()
    client.setblocking(False)
    accept = asyncio.ensure_future(loop.sock_accept(lsock))
    await loop.sock_connect(client, lsock.getsockname())
    conn, addr = await accept
    assert addr == client.getsockname()
    lsock.close()
    return client, conn


def udp_pair() -> tuple[socket.socket, socket.socket]:
    """Two non-blocking UDP sockets bound on 127.0.0.1 at free ports."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    return a, b
