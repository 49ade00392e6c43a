"""The plain stream echo handler shared by the workloads and the echo benchmark.

One definition, so that the benchmark's round trips and the workloads' healthy traffic are the
same code path: read up to 64 KiB, write it back, wait for the peer to drain, until EOF.
"""
from __future__ import annotations

import asyncio


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``asyncio.start_server`` callback: echo everything back until EOF, then close."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
