"""cancel_race: a reader that keeps cancelling its in-flight receives while a peer streams.

What it re-enacts (bpo-33694)
-----------------------------
On a proactor, a receive is submitted to the kernel and completes later.  Cancelling it is only a
request: if the kernel had already put the peer's bytes into the receive's buffer, the completion
still arrives — and pre-fix asyncio threw it away.  The trigger in the wild was start_tls: the
peer sends its first bytes, the program stops its plain reader (``pause_reading()`` cancelled the
in-flight ``WSARecv``), and 176 bytes vanished.

This program makes that moment happen hundreds of times a second, on a TCP connection over
loopback:

* the **peer** streams chunks of a known byte pattern (``sock_sendall``), and after every few
  chunks performs a *handover*: right after its bytes have landed in the reader's socket, it
  cancels the reader's in-flight receive, the way start_tls stopped the plain reader.  The
  receive is pending — the reader had read everything sent before — so the cancel races data
  that has already arrived: exactly the bpo-33694 window.
* the **reader** also gives up on receives after a short random timeout when nothing is in
  flight (an idle read timeout): a cancel with no data behind it, which must never lose a byte.

On a correct loop a cancelled receive leaves the bytes in the kernel and the next receive gets
them: at the end ``received == sent`` and the pattern is intact.  With
``loopmon run --fault cancel-drops-data`` (or ``loopmon.new_event_loop(faults=...)``) the backend
reads and drops them, as pre-fix IOCP did: the program prints how much it lost and where the
stream first broke, and the ``lost-data`` detector fires.

Why not ``asyncio.wait_for(sock_recv(...), timeout)``?  Because asyncio has its own, separate
race there, on every loop: when the receive completes in the same iteration as the timeout,
``wait_for`` cancels a task whose receive already returned data, and the data is lost inside
asyncio, not the loop.  So cancels here are made only when no received data can be waiting in
a completed-but-not-yet-resumed future: the reader has read every byte the peer sent before.

Runs until killed, or for ``--duration SECONDS``; exits 1 if bytes were lost.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sys
import time
from array import array
from typing import Optional

def _pattern(offset: int, n: int) -> bytes:
    """Stream bytes ``offset .. offset+n``: 8-byte big-endian word counters, 0, 1, 2 ...

    Every 8 bytes name their own position, so after a loss the reader can tell where it is in
    the stream again (``_locate``) and keep counting exactly how much went missing.
    """
    first = offset // 8
    words = array("Q", range(first, (offset + n + 7) // 8 + 1))
    if sys.byteorder == "little":
        words.byteswap()
    start = offset - first * 8
    return words.tobytes()[start:start + n]


def _locate(data: bytes) -> Optional[int]:
    """The stream offset ``data`` was cut from, or None when it is too short to tell."""
    for align in range(8):
        if len(data) < align + 16:
            return None
        word = int.from_bytes(data[align:align + 8], "big")
        offset = word * 8 - align
        if offset >= 0 and _pattern(offset, len(data)) == data:
            return offset
    return None


class Stream:
    """Both ends of one connection and what each has seen."""

    def __init__(self, reader_sock: socket.socket, writer_sock: socket.socket) -> None:
        self.reader_sock = reader_sock
        self.writer_sock = writer_sock
        self.sent = 0
        self.received = 0
        self.lost = 0                                 # bytes the stream skipped over
        self.losses = 0                               # ...in how many places
        self.handover_cancels = 0
        self.idle_cancels = 0
        self.first_corruption: Optional[int] = None   # stream offset of the first loss
        self.reader_task: Optional[asyncio.Task] = None
        self.reader_waiting = False                   # inside its receive, nothing to process
        self.cancel_by: Optional[str] = None          # who asked for the pending cancel
        self.stopping = False                         # main is shutting down: cancels are final


async def _connected_pair(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, socket.socket]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        writer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        writer.setblocking(False)
        accepted = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(writer, listener.getsockname())
        reader, _ = await accepted
        reader.setblocking(False)
        return reader, writer
    finally:
        listener.close()


async def _reader(loop: asyncio.AbstractEventLoop, st: Stream, rng: random.Random,
                  idle_timeout: tuple[float, float]) -> None:
    task = asyncio.current_task()
    assert task is not None

    def idle_timeout_fired() -> None:
        # only cancel when every byte sent was read (or is known lost): then no completed
        # receive can be sitting unresumed with data in it (see the module docstring)
        if st.reader_waiting and st.cancel_by is None and st.received + st.lost == st.sent:
            st.cancel_by = "idle"
            task.cancel()

    while True:
        timer = loop.call_later(rng.uniform(*idle_timeout), idle_timeout_fired)
        st.reader_waiting = True
        try:
            data = await loop.sock_recv(st.reader_sock, 65536)
        except asyncio.CancelledError:
            if st.cancel_by is None or st.stopping:
                raise                                   # somebody else cancelled us: stop
            if st.cancel_by == "idle":
                st.idle_cancels += 1
            else:
                st.handover_cancels += 1
            st.cancel_by = None
            uncancel = getattr(task, "uncancel", None)  # 3.11+: this cancel is handled
            if uncancel is not None:
                uncancel()
            continue
        finally:
            st.reader_waiting = False
            timer.cancel()
        if not data:
            return
        expected = st.received + st.lost              # where in the stream we should be
        if data != _pattern(expected, len(data)):
            found = _locate(data)
            if st.first_corruption is None:
                st.first_corruption = expected
            st.losses += 1
            if found is not None and found > expected:
                st.lost += found - expected
        st.received += len(data)


async def _peer(loop: asyncio.AbstractEventLoop, st: Stream, rng: random.Random,
                interval: float, handover_every: int, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        size = rng.randint(512, 8192)
        before = st.sent
        await loop.sock_sendall(st.writer_sock, _pattern(st.sent, size))
        st.sent += size
        n += 1
        if (n % handover_every == 0 and st.reader_waiting and st.cancel_by is None
                and st.received + st.lost == before and st.reader_task is not None):
            # the reader had read everything before this chunk: its receive is pending and
            # our bytes are in its socket now.  Stop it, as start_tls stops a plain reader.
            st.cancel_by = "handover"
            st.reader_task.cancel()
        await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
    st.writer_sock.shutdown(socket.SHUT_WR)           # end of stream: the reader drains to EOF


def _line(st: Stream, t0: float, final: bool = False) -> str:
    lost = st.sent - st.received
    what = f"lost={lost}" if final else f"in-flight={lost - st.lost} lost={st.lost}"
    broke = (f" losses={st.losses} first-loss-at-offset={st.first_corruption}"
             if st.first_corruption is not None else "")
    return (f"cancel_race: t={time.monotonic() - t0:.1f}s sent={st.sent} received={st.received} "
            f"{what} cancels: handover={st.handover_cancels} idle={st.idle_cancels}{broke}")


async def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="cancel_race", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=None,
                   help="seconds to run, then drain and check (default: until killed)")
    p.add_argument("--interval", type=float, default=0.002, help="peer: seconds between chunks")
    p.add_argument("--handover-every", type=int, default=4,
                   help="peer: cancel the reader's pending receive after every Nth chunk")
    p.add_argument("--report", type=float, default=2.0, help="seconds between progress lines")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    rng = random.Random(args.seed)
    loop = asyncio.get_running_loop()
    reader_sock, writer_sock = await _connected_pair(loop)
    st = Stream(reader_sock, writer_sock)
    stop = asyncio.Event()
    t0 = time.monotonic()
    st.reader_task = asyncio.ensure_future(_reader(loop, st, rng, (0.0005, 0.004)))
    peer = asyncio.ensure_future(
        _peer(loop, st, rng, args.interval, max(1, args.handover_every), stop))
    try:
        deadline = None if args.duration is None else t0 + args.duration
        while deadline is None or time.monotonic() < deadline:
            wait = args.report if deadline is None else min(args.report, deadline - time.monotonic())
            await asyncio.sleep(max(0.0, wait))
            if deadline is None or time.monotonic() < deadline:
                print(_line(st, t0), flush=True)
        stop.set()
        await peer
        try:
            await asyncio.wait_for(asyncio.shield(st.reader_task), 10.0)
        except asyncio.TimeoutError:
            print("cancel_race: the reader saw no end of stream within 10 s", flush=True)
            st.reader_task.cancel()
    finally:
        # interrupted (Ctrl-C cancels main) or done: stop both ends before closing their sockets
        st.stopping = True
        for task in (peer, st.reader_task):
            task.cancel()
        await asyncio.gather(peer, st.reader_task, return_exceptions=True)
        reader_sock.close()
        writer_sock.close()
    print(_line(st, t0, final=True), flush=True)
    ok = st.sent == st.received and st.first_corruption is None
    print("cancel_race: OK, no data lost" if ok else
          f"cancel_race: DATA LOST: {st.sent - st.received} of {st.sent} bytes never arrived",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:      # Ctrl-C / SIGINT: the progress lines said it all
        sys.exit(130)
