"""Echo benchmark: loopmon (bare and instrumented) against the stdlib loop, and uvloop.

Two workloads, both over asyncio streams with client and server in the same loop:

* **echo**: ``--conns`` connections (10) each send ``--size`` bytes (1 KiB) and wait for the
  echo, as fast as they can for ``--seconds``; the figure is round trips per second.
* **large transfer**: one connection sends ``--mb`` MiB in 256 KiB writes to a server that
  reads until EOF and answers with the count; the figure is MB/s.

Timings on shared machines are noisy, so every loop runs in the *same* process and run,
the order rotates each round (``--rounds``), and the table shows medians and ratios
against the stdlib ``SelectorEventLoop`` of the same run; below it, the median of each
loop's same-round ratios against the stdlib (round trips/s, and CPU per round trip), which
drifting load disturbs less.  Nothing is asserted.

The instrumentation overhead (instrumented vs bare) is the figure with the smallest margin,
so those two are measured as a tight pair: in every round their echo runs are back to back
(which of them goes first alternates), the other loops rotate around them, and the large
transfers come after the round's echo runs.  A burst of load on a shared machine lasts
seconds; adjacent runs see the same one, and the median of the per-round pairs cancels most
of it.  More, shorter rounds (``--rounds 15 --seconds 1``) give more pairs in the same time.

    PYTHONPATH=. python bench/echo.py --rounds 5 --seconds 2
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import loopmon  # noqa: E402
from loopmon.workloads.echo import echo_handler  # noqa: E402


def _loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "stdlib selector": asyncio.SelectorEventLoop,
        "loopmon bare": lambda: loopmon.new_event_loop(instrument=False),
        "loopmon instrumented": loopmon.new_event_loop,
    }
    try:
        import uvloop
        factories["uvloop"] = uvloop.new_event_loop
    except ImportError:
        pass
    return factories


async def echo_round_trips(conns: int, size: int, seconds: float) -> float:
    server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = b"x" * size
    deadline = 0.0
    counts = [0] * conns

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while time.perf_counter() < deadline:
            writer.write(payload)
            await reader.readexactly(size)
            n += 1
        counts[i] = n
        writer.close()
        await writer.wait_closed()

    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(conns)))
    elapsed = time.perf_counter() - start
    server.close()
    await server.wait_closed()
    return sum(counts) / elapsed


async def large_transfer(mb: int) -> float:
    total = mb * 1024 * 1024
    done = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while True:
            data = await reader.read(1 << 18)
            if not data:
                break
            got += len(data)
        writer.write(str(got).encode())
        await writer.drain()
        writer.close()
        done.set_result(got)

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = os.urandom(1 << 18)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()
    writer.write_eof()
    reply = await reader.read()
    elapsed = time.perf_counter() - start
    assert int(reply) == sent and await done == sent, (reply, sent)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return sent / elapsed / 1e6


def _run(factory: Callable[[], asyncio.AbstractEventLoop], coro_fn, *args) -> float:
    gc.collect()
    loop = factory()
    try:
        return loop.run_until_complete(coro_fn(*args))
    finally:
        loop.close()


def _run_timed(factory, coro_fn, *args) -> tuple[float, float]:
    """(result, process CPU seconds): CPU time is less disturbed by a busy machine."""
    cpu0 = time.process_time()
    result = _run(factory, coro_fn, *args)
    return result, time.process_time() - cpu0


_PAIR = ("loopmon bare", "loopmon instrumented")


def _round_order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order: the others rotate; bare and instrumented stay adjacent, and
    which of the two goes first alternates (see the module docstring)."""
    pair = [n for n in _PAIR if n in names]
    others = [n for n in names if n not in pair]
    if r % 2:
        pair.reverse()
    if not others:
        return pair
    k = r % (len(others) + 1)          # where the pair goes among the rotating others
    rot = others[r % len(others):] + others[:r % len(others)]
    return rot[:k] + pair + rot[k:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of one echo run")
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--mb", type=int, default=256, help="MiB in one large transfer")
    ap.add_argument("--warmup", type=int, default=1,
                    help="rounds run first and not counted (the process's first runs are slow)")
    ap.add_argument("--only", action="append", metavar="NAME[,NAME...]",
                    help="restrict to these loop names (repeatable or comma-separated)")
    args = ap.parse_args(argv)

    factories = _loop_factories()
    if args.only:
        wanted = {n.strip() for item in args.only for n in item.split(",") if n.strip()}
        unknown = wanted - set(factories)
        if unknown:
            ap.error(f"unknown loop name(s) {sorted(unknown)}; choose from {sorted(factories)}")
        factories = {k: v for k, v in factories.items() if k in wanted}
    names = list(factories)
    echo: dict[str, list[float]] = {n: [] for n in names}
    echo_cpu: dict[str, list[float]] = {n: [] for n in names}   # CPU microseconds per round trip
    bulk: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.warmup):
        # not counted: the first runs in a process are the slowest (here the very first echo
        # run measured as low as 15 k round trips/s against ~40 k after), and which loop runs
        # first is fixed by the rotation, so it would bias that loop's pairs
        for name in names:
            _run(factories[name], echo_round_trips, args.conns, args.size,
                 min(args.seconds, 0.5))
    for r in range(args.rounds):
        order = _round_order(names, r)
        for name in order:
            rate, cpu = _run_timed(factories[name], echo_round_trips,
                                   args.conns, args.size, args.seconds)
            echo[name].append(rate)
            echo_cpu[name].append(cpu / (rate * args.seconds) * 1e6)
        for name in order:
            bulk[name].append(_run(factories[name], large_transfer, args.mb))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {echo[n][-1]:,.0f} rt/s {bulk[n][-1]:,.0f} MB/s" for n in names),
            file=sys.stderr)

    med_echo = {n: statistics.median(v) for n, v in echo.items()}
    med_bulk = {n: statistics.median(v) for n, v in bulk.items()}
    ref = "stdlib selector"
    print(f"\nPython {platform.python_version()} on {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs (shared, noisy machine); {args.rounds} rounds, "
          f"medians; echo: {args.conns} conns x {args.size} B for {args.seconds:g} s; "
          f"large transfer: {args.mb} MiB\n")
    med_cpu = {n: statistics.median(v) for n, v in echo_cpu.items()}
    print("| loop | echo round-trips/s | vs stdlib | CPU µs / round trip | large transfer MB/s "
          "| vs stdlib |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        re = med_echo[n] / med_echo[ref] if ref in med_echo else float("nan")
        rb = med_bulk[n] / med_bulk[ref] if ref in med_bulk else float("nan")
        print(f"| {n} | {med_echo[n]:,.0f} | {re:.2f}x | {med_cpu[n]:.1f} | "
              f"{med_bulk[n]:,.0f} | {rb:.2f}x |")
    if ref in echo and len(names) > 1:
        # each loop against the stdlib run of the same round: steadier than a ratio of
        # medians when the machine's load drifts between rounds
        pairs_vs_ref = ", ".join(
            f"{n} {statistics.median(x / r for x, r in zip(echo[n], echo[ref])):.2f}x "
            f"(CPU {statistics.median(r / x for x, r in zip(echo_cpu[n], echo_cpu[ref])):.2f}x)"
            for n in names if n != ref)
        print(f"\nEcho vs stdlib, median of same-round pairs: {pairs_vs_ref}")
    if "loopmon bare" in med_echo and "loopmon instrumented" in med_echo:
        over_e = 1 - med_echo["loopmon instrumented"] / med_echo["loopmon bare"]
        over_b = 1 - med_bulk["loopmon instrumented"] / med_bulk["loopmon bare"]
        # per-round pairs are more robust than a ratio of medians on a noisy machine
        pairs = [1 - i / b for i, b in zip(echo["loopmon instrumented"], echo["loopmon bare"])]
        over_c = med_cpu["loopmon instrumented"] / med_cpu["loopmon bare"] - 1
        print(f"\nInstrumentation overhead (instrumented vs bare): echo {over_e:+.1%} "
              f"(median of per-round pairs {statistics.median(pairs):+.1%}; "
              f"CPU per round trip {over_c:+.1%}), large transfer {over_b:+.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
