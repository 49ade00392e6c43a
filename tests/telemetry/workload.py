"""A small plain-asyncio program for the telemetry tests: echo traffic until --duration ends.

``--fast`` removes the pause between round trips (many events a second, to fill a stalled
client's queue); ``--pending N`` keeps N receives outstanding (idle connections);
``--exit-code N`` ends with ``sys.exit(N)``.
"""
import argparse
import asyncio
import sys


async def _echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(args):
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(args.pending)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    end = loop.time() + args.duration
    payload = b"x" * 1024
    while loop.time() < end:
        writer.write(payload)
        await writer.drain()
        await reader.readexactly(len(payload))
        if not args.fast:
            await asyncio.sleep(0.002)
    writer.close()
    for _, w in idle:
        w.close()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--pending", type=int, default=2)
    p.add_argument("--exit-code", type=int, default=0)
    args = p.parse_args()
    asyncio.run(main(args))
    print("done", flush=True)
    sys.exit(args.exit_code)
