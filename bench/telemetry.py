"""Telemetry benchmarks: codec throughput, the cost of a streaming client, memory under a stalled one.

    PYTHONPATH=. python bench/telemetry.py [--rounds 5] [--rss-seconds 60] [--skip-rss]

1. **Codec**: op events/s encoded (as the agent does, ``wire.encode_op_events``) and decoded
   (as the client does, ``wire.FrameDecoder``), on a realistic mix of events taken from a real
   Monitor, in batches of the size a 50 ms tick sees at ~40 k events/s.  Goal >= 500 k/s each.
2. **Echo with a client**: 10 connections x 1 KiB echo round trips over asyncio streams on
   the instrumented loop, in a child process under ``loopmon run`` (agent serving).  Variants,
   alternated over several rounds, medians: the agent with no client, and the agent with a
   client streaming (connected from this process, decoding every frame) within the agent's
   default event budget (``--unlimited`` adds a client sent every event).  Goal: the client
   costs <= 5 %.  "no agent" (the instrumented loop alone) is printed for reference.
   ``--warm-rounds N`` runs N round trips per connection after the client is streaming and
   before the timer: the budget's burst allowance (half a second's worth, sent in the first
   ~30 ms of a busy phase) is spent by then, so the figure is steady-state streaming; without
   it a short run also pays for the burst.
3. **RSS with a client that never reads**: a fast echo workload under ``loopmon run`` with a
   client that completes the handshake and then never reads; the child's RSS is sampled every
   second.  It should stay flat (the per-client queue and transport buffer are bounded).

Thread CPU comes from ``/proc/PID/task/TID/schedstat`` (nanoseconds; psutil's 10 ms ticks
were as coarse as the differences measured).  The last rows say how many events a child's
ring lost (``events_dropped`` in the client's last Sample, worst run): a drain that came too
late for the ring's size.

Timings on a shared 2-core machine are noisy: read the ratios, not the absolute figures.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loopmon.monitor import Monitor                  # noqa: E402
from loopmon.monitor.events import OUTCOME_COMPLETED  # noqa: E402
from loopmon.telemetry import wire                   # noqa: E402

N_CONNS = 10
PAYLOAD = 1024


# ----------------------------------------------------------------------------- 1. codec
def _event_mix(n: int) -> list[tuple]:
    m = Monitor(ring_capacity=n + 10)
    i = 0
    while i < n:
        m.op_inline(4, 7, 1024, 1024)                 # send, inline
        m.op_inline(1, 8, 65536, 1024)                # recv_into, inline
        rec = m.op_start(1, 8, 65536)                 # recv_into that went pending
        m.buffer_pin(rec, 65536)
        m.op_end(rec, OUTCOME_COMPLETED, 1024)        # end + buffer release
        i += 5
    return m.drain()[:n]


def bench_codec(total: int = 400_000, batch: int = 2000) -> tuple[float, float, float]:
    events = _event_mix(total)
    batches = [events[i:i + batch] for i in range(0, len(events), batch)]
    best_enc = best_dec = 0.0
    size = 0
    for _ in range(3):
        t0 = time.perf_counter()
        frames = [f for b in batches for f in wire.encode_op_events(b)]
        t1 = time.perf_counter()
        dec = wire.FrameDecoder(expect_header=False)
        n = 0
        for f in frames:
            for msg in dec.feed(f):
                n += len(msg.events)
        t2 = time.perf_counter()
        assert n == len(events)
        best_enc = max(best_enc, len(events) / (t1 - t0))
        best_dec = max(best_dec, len(events) / (t2 - t1))
        size = sum(map(len, frames)) / len(events)
    return best_enc, best_dec, size


# ----------------------------------------------------------------------------- 2. echo child
ECHO_CHILD = r'''
import asyncio, sys, time
N_CONNS, PAYLOAD, ROUNDS = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
WARM = int(sys.argv[5]) if len(sys.argv) > 5 else 0
async def handle(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    w.close()
async def client(port, n):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    msg = b"x" * PAYLOAD
    for _ in range(n):
        w.write(msg)
        await w.drain()
        await r.readexactly(PAYLOAD)
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    await asyncio.gather(*[client(port, 50) for _ in range(N_CONNS)])     # warm up
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if WARM:   # busy before the timer: a client's event-budget burst is spent by then
        await asyncio.gather(*[client(port, WARM) for _ in range(N_CONNS)])
        print("warmed", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0 = time.perf_counter()
    await asyncio.gather(*[client(port, ROUNDS) for _ in range(N_CONNS)])
    print(time.perf_counter() - t0, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)   # CPU sampled
    srv.close()
if sys.argv[4] == "direct":
    import loopmon
    asyncio.run(main(), loop_factory=loopmon.new_event_loop) if sys.version_info >= (3, 12) \
        else asyncio.Runner(loop_factory=loopmon.new_event_loop).run(main())
else:
    asyncio.run(main())
'''


def _env(runtime_dir: str, **extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["LOOPMON_RUNTIME_DIR"] = runtime_dir
    env.update(extra)
    return env


UNLIMITED = "agent + client, no budget"
RING_DROPPED: dict[str, int] = {}    # variant -> most events a child's ring lost (its last Sample)
SAMPLES_ONLY = "agent + client, samples only"


class _StreamingClient(threading.Thread):
    """A client on its own thread and asyncio loop, decoding every frame until the end."""

    def __init__(self, pid: int, **connect_kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.connect_kwargs = connect_kwargs
        self.events = 0
        self.omitted = 0                 # left out by the agent's event budget (last Sample)
        self.ring_dropped = 0            # the monitor's events_dropped (ring overflow; last Sample)
        self.connected = threading.Event()

    def run(self) -> None:
        from loopmon import client as lc

        async def main() -> None:
            c = await lc.connect(self.pid, **self.connect_kwargs)
            self.connected.set()
            async for msg in c:
                ev = getattr(msg, "events", None)
                if ev is not None:
                    self.events += len(ev)
                counters = getattr(msg, "counters", None)
                if counters:
                    self.omitted = counters.get("events_omitted", 0)
                    self.ring_dropped = counters.get("events_dropped", 0)
        asyncio.run(main())


def _thread_cpu(proc: Any) -> dict[int, float]:
    """CPU seconds per thread of ``proc``: from ``/proc/PID/task/TID/schedstat`` (nanoseconds)
    where it exists -- psutil's per-thread times come in 10 ms clock ticks, as coarse as the
    difference being measured (~0.3 ms per 1000 round trips in a 30 k round-trip run)."""
    out = {}
    for t in proc.threads():
        try:
            with open(f"/proc/{proc.pid}/task/{t.id}/schedstat") as f:
                out[t.id] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            out[t.id] = t.user_time + t.system_time
    return out


def _echo_once(script: str, variant: str, rounds: int, runtime_dir: str,
               warm: int = 0) -> tuple[float, int, int, float, float, float]:
    """-> (elapsed, events streamed, events omitted, loop-thread CPU s, other threads' CPU s,
    client CPU s)"""
    if variant == "no agent":
        cmd = [sys.executable, script, str(N_CONNS), str(PAYLOAD), str(rounds), "direct",
               str(warm)]
    else:
        cmd = [sys.executable, "-m", "loopmon", "run", script, str(N_CONNS), str(PAYLOAD),
               str(rounds), "policy", str(warm)]
    extra = {"LOOPMON_EVENT_BUDGET": "0"} if variant == UNLIMITED else {}
    # cwd: "python -m loopmon" puts the working directory first on sys.path, so the child
    # would import the loopmon of wherever the benchmark was started from, not REPO's
    p = subprocess.Popen(cmd, env=_env(runtime_dir, **extra), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert p.stdout.readline().strip() == "ready"
        streamer = None
        if variant in ("agent + client", UNLIMITED, SAMPLES_ONLY):
            from loopmon.telemetry import discovery
            os.environ["LOOPMON_RUNTIME_DIR"] = runtime_dir
            while discovery.find(p.pid) is None:
                time.sleep(0.01)
            streamer = _StreamingClient(p.pid, op_events=variant != SAMPLES_ONLY)
            streamer.start()
            streamer.connected.wait(10)
            time.sleep(0.2)                  # past the backlog
        import psutil
        child = psutil.Process(p.pid)
        if warm:
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "warmed"
        cpu0 = _thread_cpu(child)
        ev0, om0 = (streamer.events, streamer.omitted) if streamer is not None else (0, 0)
        me0 = time.thread_time() if streamer is None else 0.0
        own0 = psutil.Process().cpu_times()
        p.stdin.write("go\n")
        p.stdin.flush()
        elapsed = float(p.stdout.readline())
        cpu1 = _thread_cpu(child)
        own1 = psutil.Process().cpu_times()
        loop_cpu = cpu1.get(p.pid, 0.0) - cpu0.get(p.pid, 0.0)
        other_cpu = sum(v - cpu0.get(k, 0.0) for k, v in cpu1.items() if k != p.pid)
        client_cpu = (own1.user + own1.system - own0.user - own0.system) if streamer else 0.0
        del me0
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait(60)
        if streamer is not None:
            streamer.join(10)
            RING_DROPPED[variant] = max(RING_DROPPED.get(variant, 0), streamer.ring_dropped)
        if streamer is None:
            return elapsed, 0, 0, loop_cpu, other_cpu, client_cpu
        return (elapsed, streamer.events - ev0, streamer.omitted - om0, loop_cpu, other_cpu,
                client_cpu)
    finally:
        if p.poll() is None:
            p.kill()


VARIANT_NAMES = {"none": "no agent", "agent": "agent, no client", "client": "agent + client",
                 "unlimited": UNLIMITED, "samples": SAMPLES_ONLY}


def bench_echo(rounds: int, per_conn: int, unlimited: bool = False,
               only: Optional[list[str]] = None, warm: int = 0) -> dict[str, Any]:
    runtime_dir = tempfile.mkdtemp(prefix="lmbench-")
    script = os.path.join(runtime_dir, "echo_child.py")
    Path(script).write_text(ECHO_CHILD)
    variants = ["no agent", "agent, no client", "agent + client"]
    if unlimited:
        variants.append(UNLIMITED)
    if only:
        variants = [VARIANT_NAMES[v] for v in only]
    times: dict[str, Any] = {v: [] for v in variants}
    cpu: dict[str, list] = {v: [] for v in variants}
    streamed: dict[str, list] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            t, n, omitted, loop_cpu, other_cpu, client_cpu = _echo_once(script, v, per_conn,
                                                                       runtime_dir, warm)
            times[v].append(t)
            cpu[v].append((loop_cpu, other_cpu, client_cpu))
            if n:
                streamed[v].append((n / t, omitted / t))
    times["_streamed"] = streamed
    times["_cpu"] = cpu
    times["_variants"] = variants
    return times


# ----------------------------------------------------------------------------- 3. RSS
def bench_rss(seconds: float) -> list[tuple[float, float]]:
    import psutil
    from loopmon.telemetry import discovery
    runtime_dir = tempfile.mkdtemp(prefix="lmbench-")
    os.environ["LOOPMON_RUNTIME_DIR"] = runtime_dir
    workload = REPO / "tests" / "telemetry" / "workload.py"
    p = subprocess.Popen([sys.executable, "-m", "loopmon", "run", str(workload), "--fast",
                          "--duration", str(seconds + 5)], env=_env(runtime_dir),
                         stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert p.stdout.readline().strip() == "ready"
        while (entry := discovery.find(p.pid)) is None:
            time.sleep(0.01)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(entry.endpoint[5:])
        s.sendall(wire.STREAM_HEADER + wire.encode_frame(wire.ClientHello(entry.token)))
        proc = psutil.Process(p.pid)
        t0 = time.monotonic()
        series = []
        while (t := time.monotonic() - t0) < seconds:
            series.append((t, proc.memory_info().rss / (1 << 20)))
            time.sleep(1.0)
        series.append((time.monotonic() - t0, proc.memory_info().rss / (1 << 20)))
        s.close()
        return series
    finally:
        p.kill()
        p.wait()


def _load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-conn", type=int, default=2000, help="round trips per connection")
    ap.add_argument("--rss-seconds", type=float, default=60.0)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--unlimited", action="store_true",
                    help="also run a streaming client with LOOPMON_EVENT_BUDGET=0 (every event)")
    ap.add_argument("--only", default="",
                    help="comma-separated echo variants to run, of: " + ", ".join(VARIANT_NAMES))
    ap.add_argument("--skip-codec", action="store_true")
    ap.add_argument("--warm-rounds", type=int, default=0,
                    help="round trips per connection after the client is streaming and before "
                         "the timer (the event budget's burst allowance is spent by then: "
                         "steady-state streaming)")
    args = ap.parse_args()
    only = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = [v for v in only if v not in VARIANT_NAMES]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}")

    print("| benchmark | figure | goal |")
    print("|---|---|---|")
    if not args.skip_codec:
        enc, dec, size = bench_codec()
        print(f"| op events encoded (agent, `wire.encode_op_events`) | {enc / 1e3:,.0f} k "
              f"events/s ({size:.1f} B/event) | >= 500 k/s |")
        print(f"| op events decoded (client, `wire.FrameDecoder`) | {dec / 1e3:,.0f} k events/s "
              f"| >= 500 k/s |", flush=True)

    print(f"| machine load before the echo runs (`uptime`) | {_load()} | |", flush=True)
    times = bench_echo(args.rounds, args.per_conn, args.unlimited, only, args.warm_rounds)
    variants = times["_variants"]
    med = {k: statistics.median(times[k]) for k in variants}
    n_msgs = N_CONNS * args.per_conn
    for v in variants:
        ratios = [f"{med[v] / med[ref]:.3f}x time of '{ref}'"
                  for ref in ("agent, no client", "no agent") if ref in med]
        goal = "<= 1.05" if v == "agent + client" else ""
        print(f"| echo {N_CONNS} x 1 KiB, {v} (median of {args.rounds}) | "
              f"{n_msgs / med[v]:,.0f} round trips/s, {', '.join(ratios)} | {goal} |")
    cpu = times["_cpu"]
    for v in variants:
        loop_c = statistics.median(c[0] for c in cpu[v])
        other_c = statistics.median(c[1] for c in cpu[v])
        client_c = statistics.median(c[2] for c in cpu[v])
        print(f"| CPU per 1000 round trips, {v} | loop thread {1e3 * loop_c / n_msgs * 1e3:.2f} ms, "
              f"telemetry threads {1e3 * other_c / n_msgs * 1e3:.2f} ms"
              + (f", client process {1e3 * client_c / n_msgs * 1e3:.1f} ms" if client_c else "")
              + " | |")
    for v, rates in times["_streamed"].items():
        if rates:
            print(f"| events streamed to the client during echo, {v} | "
                  f"{statistics.median(r[0] for r in rates):,.0f} events/s sent, "
                  f"{statistics.median(r[1] for r in rates):,.0f} events/s omitted "
                  f"(event budget) | |", flush=True)
    for v, n in RING_DROPPED.items():
        print(f"| events lost to ring overflow (`events_dropped`, worst run), {v} | {n} | 0 |")
    print(f"| machine load after (`uptime`) | {_load()} | |", flush=True)

    if not args.skip_rss:
        series = bench_rss(args.rss_seconds)
        first = series[min(5, len(series) - 1)][1]
        last = series[-1][1]
        peak = max(r for _, r in series)
        every = max(1, len(series) // 6)
        points = ", ".join(f"{r:.1f} @{t:.0f}s" for t, r in series[::every])
        print(f"| RSS, fast echo + a client that never reads, {args.rss_seconds:g} s | "
              f"{first:.1f} MiB at 5 s -> {last:.1f} MiB at end (peak {peak:.1f}); "
              f"MiB over time: {points} | flat |")


if __name__ == "__main__":
    main()
