"""send_leak: sends that fail at submission, in a steady rhythm, beside healthy traffic.

What it re-enacts (bpo-32710)
-----------------------------
A proactor allocates (or pins) a send's buffer and then submits it.  When ``WSASend()`` failed
*immediately* — the peer had already reset the connection — pre-fix CPython's overlapped object
never released that buffer: one leaked reference per failure, invisible until a year of
``ConnectionResetError``s had piled up.

This program makes a failing send happen every ``--interval`` seconds:

* a **resetting server** accepts each connection and closes it with ``SO_LINGER`` = (on, 0),
  so the kernel answers with an RST instead of a FIN;
* a **client** connects, waits for the RST to land, and sends: the send fails right away
  (``ConnectionResetError``, or ``BrokenPipeError``), at submission;
* meanwhile a **healthy echo** connection (asyncio streams) exchanges a message every
  ``--echo-interval`` seconds and checks every echo, so the monitor also sees normal ops
  and buffers that come and go.

On a correct loop every failed send's buffer is released with its op.  Under
``loopmon run --fault send-keeps-buffer`` the backend keeps each one, the monitor's held-buffer
bytes climb in step with the failures, and the ``leaked-buffer`` detector fires.

Runs until killed, or for ``--duration SECONDS``.  Exits 1 if an echo came back wrong (a
failing send is the *expected* outcome here, not an error).
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import time
from collections import Counter
from typing import Optional

from .echo import echo_handler

_LINGER_RESET = struct.pack("ii", 1, 0)   # l_onoff=1, l_linger=0: close() sends an RST


class Stats:
    def __init__(self) -> None:
        self.attempts = 0
        self.failed_sends: Counter = Counter()      # error type -> count
        self.unexpected_successes = 0               # the RST had not landed yet
        self.echoes = 0
        self.echo_errors = 0


async def _resetting_server(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        conn.close()


async def _send_to_reset_peer(loop: asyncio.AbstractEventLoop, addr, payload: bytes,
                              stats: Stats) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, addr)
        # wait for the RST (loopback: well under a millisecond once the server ran)
        for _ in range(100):
            await asyncio.sleep(0.005)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or _peer_gone(sock):
                break
        stats.attempts += 1
        try:
            await loop.sock_sendall(sock, payload)
        except OSError as exc:
            stats.failed_sends[type(exc).__name__] += 1
        else:
            stats.unexpected_successes += 1
    except OSError as exc:   # connect itself refused / reset: count it, keep the rhythm
        stats.failed_sends["connect:" + type(exc).__name__] += 1
    finally:
        sock.close()


def _peer_gone(sock: socket.socket) -> bool:
    """True once the peer's RST/FIN is here (a non-blocking peek says so without reading)."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def _healthy_echo(port: int, interval: float, stats: Stats, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        n = 0
        while not stop.is_set():
            msg = (b"echo %08d " % n) * 64                    # ~1 KiB
            writer.write(msg)
            await writer.drain()
            back = await reader.readexactly(len(msg))
            if back != msg:
                stats.echo_errors += 1
            stats.echoes += 1
            n += 1
            await asyncio.sleep(interval)
    finally:
        writer.close()
        await writer.wait_closed()


def _line(stats: Stats, t0: float) -> str:
    fails = sum(stats.failed_sends.values())
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.failed_sends.items())) or "none"
    return (f"send_leak: t={time.monotonic() - t0:.1f}s sends-to-reset-peers={stats.attempts} "
            f"failed={fails} ({kinds}) unexpected-successes={stats.unexpected_successes} "
            f"echoes={stats.echoes} echo-errors={stats.echo_errors}")


async def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="send_leak", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=None,
                   help="seconds to run (default: until killed)")
    p.add_argument("--interval", type=float, default=0.1,
                   help="seconds between sends to a resetting peer")
    p.add_argument("--size", type=int, default=4096, help="bytes per failing send")
    p.add_argument("--echo-interval", type=float, default=0.02)
    p.add_argument("--report", type=float, default=2.0, help="seconds between progress lines")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    loop = asyncio.get_running_loop()
    stats = Stats()
    stop = asyncio.Event()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    reset_addr = listener.getsockname()
    echo_server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    payload = b"x" * args.size
    t0 = time.monotonic()
    resetter = asyncio.ensure_future(_resetting_server(loop, listener))
    echo = asyncio.ensure_future(_healthy_echo(echo_port, args.echo_interval, stats, stop))
    deadline = None if args.duration is None else t0 + args.duration
    next_report = t0 + args.report
    try:
        while deadline is None or time.monotonic() < deadline:
            started = time.monotonic()
            await _send_to_reset_peer(loop, reset_addr, payload, stats)
            if time.monotonic() >= next_report:
                print(_line(stats, t0), flush=True)
                next_report += args.report
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))
        stop.set()
        await echo
    finally:
        resetter.cancel()
        echo.cancel()
        await asyncio.gather(resetter, echo, return_exceptions=True)
        listener.close()
        echo_server.close()
        await echo_server.wait_closed()
    print(_line(stats, t0), flush=True)
    ok = stats.echo_errors == 0
    print("send_leak: OK, every echo intact" if ok else "send_leak: ECHO CORRUPTED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:      # Ctrl-C / SIGINT: the progress lines said it all
        sys.exit(130)
