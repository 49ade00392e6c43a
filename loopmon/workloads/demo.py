"""demo: a small, busy asyncio network program that makes every graph of the app move.

``loopmon-gui --demo`` runs this under ``python -m loopmon run -m loopmon.workloads.demo`` so a
newcomer sees live graphs without a program of their own.  It is ordinary asyncio (streams on
127.0.0.1, no loopmon imports) and has four parts, each there for a graph:

* **steady echo** — a few long-lived clients send messages of random size to an echo server and
  check every echo: a constant floor of receive/send ops and a steady receive rate;
* **bursts** — every ``BURST_EVERY`` seconds, for ``BURST_LENGTH`` seconds, the clients send
  bigger messages back to back and a flock of extra connections opens, talks and closes: the
  outstanding-op count, the receive rate and RSS jump and fall back;
* **churn** — a short-lived connection every ``CHURN_EVERY`` seconds (connect, a few
  exchanges, close): connect/accept ops and fds coming and going;
* **slow readers** — "sink" connections whose server side reads in small sips with pauses, from
  sockets with small kernel buffers, while the client side writes faster than that: sends stay
  *pending* with their buffers pinned, so outstanding sends and buffer bytes are visible; each
  sink alternates a slow phase (sends pile up) with a catch-up phase (they drain), staggered.

A periodic "report" step does ~15–40 ms of CPU work on the loop thread, like a real program
that aggregates statistics, so loop lag is not flat.  Everything is sized to stay clear of the
detectors' thresholds (no send pending 10 s, no sustained climb, lag max well under 100 ms):
the plain demo must raise no alert.

Runs until killed (SIGTERM/SIGINT: a clean stop), or for ``--duration SECONDS``.  Exits 1 if an
echo came back wrong.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import socket
import sys
import time
from typing import Optional

HOST = "127.0.0.1"
STEADY_CLIENTS = 5
STEADY_INTERVAL = 0.02          # seconds between messages per steady client
BURST_EVERY = 8.0
BURST_LENGTH = 1.5
BURST_CONNECTIONS = 14
CHURN_EVERY = 0.4
SINKS = 4
SINK_BUFFER = 8 * 1024          # small kernel buffers so writes outrun reads quickly
SINK_CHUNK = 48 * 1024
SINK_CYCLE = 6.0                # slow phase + catch-up phase, staggered across sinks
SINK_SLOW_PART = 0.6            # fraction of the cycle spent sipping
REPORT_EVERY = 2.5


class Stats:
    def __init__(self) -> None:
        self.echoes = 0
        self.echo_errors = 0
        self.bytes_echoed = 0
        self.connections = 0
        self.sunk = 0


def _phase(t: float, offset: float) -> float:
    return ((t + offset) % SINK_CYCLE) / SINK_CYCLE


_handlers: set[asyncio.Task] = set()


def _track_handler() -> None:
    task = asyncio.current_task()
    if task is not None:
        _handlers.add(task)
        task.add_done_callback(_handlers.discard)


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _track_handler()
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    except asyncio.CancelledError:
        # shutting down; returning (not re-raising) keeps 3.11's start_server callback quiet
        return
    finally:
        writer.close()


async def _exchange(reader, writer, size: int, stats: Stats) -> None:
    payload = os.urandom(size)
    writer.write(len(payload).to_bytes(4, "big") + payload)
    await writer.drain()
    echoed = await reader.readexactly(4 + size)
    if echoed[4:] != payload:
        stats.echo_errors += 1
    stats.echoes += 1
    stats.bytes_echoed += size


async def _steady_client(port: int, stats: Stats, t0: float, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    stats.connections += 1
    try:
        while True:
            bursting = (time.monotonic() - t0) % BURST_EVERY < BURST_LENGTH
            size = rng.randint(4 * 1024, 24 * 1024) if bursting else rng.randint(200, 6000)
            await _exchange(reader, writer, size, stats)
            await asyncio.sleep(0.004 if bursting else STEADY_INTERVAL * rng.uniform(0.5, 1.5))
    finally:
        writer.close()


async def _short_connection(port: int, stats: Stats, exchanges: int, rng: random.Random,
                            linger: float) -> None:
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return
    stats.connections += 1
    try:
        for _ in range(exchanges):
            await _exchange(reader, writer, rng.randint(100, 20000), stats)
            await asyncio.sleep(linger / max(1, exchanges))
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _churn(port: int, stats: Stats, t0: float, rng: random.Random) -> None:
    tasks: set[asyncio.Task] = set()
    next_burst = t0 + 2.0           # the first burst early, so graphs move within seconds
    while True:
        task = asyncio.ensure_future(_short_connection(port, stats, rng.randint(1, 5), rng,
                                                       rng.uniform(0.1, 1.2)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if time.monotonic() >= next_burst:
            next_burst += BURST_EVERY
            for _ in range(BURST_CONNECTIONS):
                t = asyncio.ensure_future(_short_connection(
                    port, stats, rng.randint(3, 10), rng, BURST_LENGTH * rng.uniform(0.5, 1.0)))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        await asyncio.sleep(CHURN_EVERY * rng.uniform(0.5, 1.5))


def _sink_handler(stats: Stats, t0: float):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _track_handler()
        try:
            offset = float(int.from_bytes(await reader.readexactly(1), "big")) * SINK_CYCLE / SINKS
            while True:
                slow = _phase(time.monotonic() - t0, offset) < SINK_SLOW_PART
                data = await reader.read(2048 if slow else 1 << 20)
                if not data:
                    break
                stats.sunk += len(data)
                if slow:
                    await asyncio.sleep(0.05)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        finally:
            writer.close()
    return handle


async def _sink_writer(port: int, index: int, t0: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SINK_BUFFER)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(bytes([index]))
    chunk = b"\x5a" * SINK_CHUNK
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)
    finally:
        writer.close()


def _report(stats: Stats, rng: random.Random) -> None:
    """The periodic 'statistics' step: real CPU work on the loop thread (loop lag)."""
    rounds = rng.randint(1500, 4500)
    h = hashlib.sha256()
    block = os.urandom(4096)
    for _ in range(rounds):
        h.update(block)


async def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="loopmon.workloads.demo", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: run until killed)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: time based)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    stats = Stats()
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass   # Windows / no signal support: Ctrl-C still raises KeyboardInterrupt

    echo_server = await asyncio.start_server(_echo_handler, HOST, 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    sink_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sink_listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SINK_BUFFER)
    sink_listener.bind((HOST, 0))
    sink_server = await asyncio.start_server(_sink_handler(stats, t0), sock=sink_listener)
    sink_port = sink_listener.getsockname()[1]

    tasks = [asyncio.ensure_future(_steady_client(echo_port, stats, t0, random.Random(rng.random())))
             for _ in range(STEADY_CLIENTS)]
    tasks.append(asyncio.ensure_future(_churn(echo_port, stats, t0, random.Random(rng.random()))))
    tasks += [asyncio.ensure_future(_sink_writer(sink_port, i, t0)) for i in range(SINKS)]
    try:
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - t0 >= args.duration:
                break
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()
            _report(stats, rng)
            try:
                await asyncio.wait_for(stop.wait(), REPORT_EVERY * rng.uniform(0.6, 1.4))
            except asyncio.TimeoutError:
                pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        echo_server.close()
        sink_server.close()
        handlers = list(_handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
    print(f"demo: {stats.echoes} echoes ({stats.bytes_echoed} B), {stats.connections} "
          f"connections, {stats.sunk} B sunk, {stats.echo_errors} bad echoes", file=sys.stderr)
    return 1 if stats.echo_errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
