"""The agent in a real child process under `loopmon run`, seen through loopmon.client."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from loopmon import client as lmclient
from loopmon.telemetry import discovery, wire
from loopmon.telemetry.messages import (Dropped, Goodbye, Hello, History, OpEvents, Outstanding,
                                        Sample)

from telemetry_helpers import child_env, run_async, wait_discovered


async def _collect(target, *, n_samples: int, token=None, timeout: float = 20.0) -> list:
    c = await lmclient.connect(target, token=token)
    out = [c.hello]
    try:
        async def read():
            async for msg in c:
                out.append(msg)
                if sum(isinstance(m, Sample) for m in out) >= n_samples:
                    return
        await asyncio.wait_for(read(), timeout)
    finally:
        await c.close()
    return out


def test_late_attach_sees_history_and_outstanding(children):
    p = children.workload("--duration", "30", "--pending", "3")
    entry = wait_discovered(p.pid)
    assert entry.backend == "selector" and entry.endpoint.startswith("unix:")
    time.sleep(1.5)                                  # attach late
    msgs = run_async(_collect(p.pid, n_samples=3))
    hello, history, outstanding = msgs[:3]
    assert isinstance(hello, Hello) and hello.pid == p.pid and hello.backend == "selector"
    assert hello.argv[0].endswith("workload.py") and hello.sample_period == pytest.approx(0.05)
    assert isinstance(history, History) and len(history.samples) >= 10   # ~1.5 s at 50 ms
    first, last = history.samples[0], history.samples[-1]
    assert first.t < last.t and last.counters["ops_submitted"] > 0 and last.rss > 0
    assert isinstance(outstanding, Outstanding)
    kinds = [op["kind"] for op in outstanding.ops]
    assert "accept" in kinds and kinds.count("recv_into") + kinds.count("recv") >= 3
    events = [e for m in msgs if isinstance(m, OpEvents) for e in m.events]
    assert events, "live op events flow after the backlog"


def test_many_clients_at_once(children):
    p = children.workload("--duration", "30")
    wait_discovered(p.pid)

    async def many():
        return await asyncio.gather(*[_collect(p.pid, n_samples=4) for _ in range(12)])
    results = run_async(many(), timeout=60)
    for msgs in results:
        assert isinstance(msgs[1], History) and sum(isinstance(m, Sample) for m in msgs) >= 4
    assert p.poll() is None


def test_tcp_listen_and_wrong_token(children):
    p = children.workload("--duration", "30", run_opts=("--listen", "127.0.0.1:0"))
    entry = wait_discovered(p.pid)
    tcp = entry.extra_endpoints[0]
    assert tcp.startswith("127.0.0.1:")
    msgs = run_async(_collect(tcp, n_samples=1))            # token looked up by endpoint
    assert isinstance(msgs[0], Hello)
    with pytest.raises(lmclient.ConnectError, match="wrong token"):
        run_async(lmclient.connect(tcp, token="not-the-token"))
    with pytest.raises(lmclient.ConnectError, match="wrong token"):
        run_async(lmclient.connect(entry.endpoint, token=""))
    assert p.poll() is None
    p.kill()
    _, err = p.communicate(timeout=10)
    assert "wrong token" in err                               # the agent logged it


def _raw_handshake(path: str, token: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(wire.STREAM_HEADER + wire.encode_frame(wire.ClientHello(token)))
    return s


def test_stalled_client_costs_the_target_nothing_and_gets_drops(children):
    # no event budget: the full event rate fills the stalled client's bounded queue quickly
    p = children.workload("--duration", "40", "--fast",
                          env=child_env(LOOPMON_EVENT_BUDGET="0"))
    entry = wait_discovered(p.pid)
    stalled = _raw_handshake(entry.endpoint[5:], entry.token)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # while it stalls, another client keeps getting fresh samples at the normal cadence
    t0 = time.monotonic()
    msgs = run_async(_collect(p.pid, n_samples=60), timeout=60)
    samples = [m for m in msgs if isinstance(m, Sample)]
    assert len(samples) >= 60 and time.monotonic() - t0 < 50
    assert samples[-1].counters["ops_submitted"] > samples[0].counters["ops_submitted"]
    # now read the stalled one: somewhere in its stream a Dropped message says what it lost
    dec = wire.FrameDecoder()
    got = []
    stalled.settimeout(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(isinstance(m, Dropped) for m in got):
        data = stalled.recv(1 << 20)
        if not data:
            break
        got += dec.feed(data)
    drops = [m for m in got if isinstance(m, Dropped)]
    assert drops and drops[0].count > 0 and drops[0].total >= drops[0].count
    stalled.close()
    assert p.poll() is None


def test_client_killed_mid_stream(children, runtime_dir):
    p = children.workload("--duration", "30", "--fast")
    wait_discovered(p.pid)
    code = ("import asyncio, sys\n"
            "from loopmon import client\n"
            "async def main():\n"
            "    c = await client.connect(int(sys.argv[1]))\n"
            "    n = 0\n"
            "    async for m in c:\n"
            "        n += 1\n"
            "        if n == 20: print('streaming', flush=True)\n"
            "asyncio.run(main())\n")
    victims = [subprocess.Popen([sys.executable, "-c", code, str(p.pid)], env=child_env(),
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for v in victims:
            assert v.stdout.readline().strip() == "streaming"
        for v in victims:
            v.send_signal(signal.SIGKILL)
            v.wait(10)
        msgs = run_async(_collect(p.pid, n_samples=5))
        assert isinstance(msgs[1], History)
        assert p.poll() is None
    finally:
        for v in victims:
            if v.poll() is None:
                v.kill()


def test_garbage_bytes_from_many_connections(children):
    p = children.workload("--duration", "40")
    entry = wait_discovered(p.pid)
    path = entry.endpoint[5:]
    rng = random.Random(1234)
    valid = wire.STREAM_HEADER + wire.encode_frame(wire.ClientHello(entry.token))

    async def good_client_during_attack():
        c = await lmclient.connect(p.pid)
        samples = 0
        async for msg in c:
            samples += isinstance(msg, Sample)
            if samples >= 40:
                break
        await c.close()
        return samples

    async def attack(i: int):
        try:
            r, w = await asyncio.open_unix_connection(path)
        except OSError:
            return
        kind = i % 5
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
        elif kind == 1:      # mutated valid handshake
            data = bytearray(valid)
            for _ in range(3):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        elif kind == 2:      # oversize frame after a good stream header
            data = wire.STREAM_HEADER + struct.pack(">IB", 0xFFFFFFF0, 16)
        elif kind == 3:      # wrong major version
            data = b"LMON\x63\x00" + valid[6:]
        else:                # valid handshake, then garbage frames
            data = valid + bytes(rng.randrange(256) for _ in range(500))
        try:
            w.write(data)
            await w.drain()
            await asyncio.wait_for(r.read(1 << 16), 2)
        except (OSError, asyncio.TimeoutError):
            pass
        w.close()

    async def scenario():
        good = asyncio.ensure_future(good_client_during_attack())
        for round_ in range(4):
            await asyncio.gather(*[attack(round_ * 25 + i) for i in range(25)])
        return await good
    assert run_async(scenario(), timeout=60) >= 40
    msgs = run_async(_collect(p.pid, n_samples=2))          # and new clients still work
    assert isinstance(msgs[1], History)
    assert p.poll() is None


def test_target_exit_ends_stream_cleanly(children, runtime_dir):
    p = children.workload("--duration", "1.5", "--exit-code", "4")
    entry = wait_discovered(p.pid)

    async def to_the_end():
        c = await lmclient.connect(p.pid)
        msgs = [m async for m in c]
        return c, msgs
    c, msgs = run_async(to_the_end())
    assert isinstance(msgs[-1], Goodbye) and msgs[-1].reason == "program exited"
    assert c.end_reason.startswith("goodbye")
    assert p.wait(10) == 4
    last = [m for m in msgs if isinstance(m, Sample)][-1]
    assert last.counters["closed"] and last.counters["ops_outstanding"] == 0
    assert not os.path.exists(entry.endpoint[5:])
    assert not os.path.exists(os.path.join(runtime_dir, f"{p.pid}.json"))


def test_target_killed_ends_stream_and_is_pruned(children, runtime_dir):
    p = children.workload("--duration", "30")
    wait_discovered(p.pid)

    async def until_killed():
        c = await lmclient.connect(p.pid)
        n = 0
        async for _ in c:
            n += 1
            if n == 10:
                p.kill()
        return c
    c = run_async(until_killed())
    assert c.end_reason and not c.end_reason.startswith("goodbye")
    p.wait(10)
    assert os.path.exists(os.path.join(runtime_dir, f"{p.pid}.json"))      # left behind
    assert p.pid not in [e.pid for e in discovery.list_processes()]
    assert not os.path.exists(os.path.join(runtime_dir, f"{p.pid}.json"))  # pruned
    with pytest.raises(lmclient.ConnectError, match=f"pid {p.pid}"):
        run_async(lmclient.connect(p.pid))


def test_private_permissions(children, runtime_dir):
    p = children.workload("--duration", "30")
    entry = wait_discovered(p.pid)
    assert os.stat(runtime_dir).st_mode & 0o777 == 0o700
    assert os.stat(entry.endpoint[5:]).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(runtime_dir, f"{p.pid}.json")).st_mode & 0o777 == 0o600


def test_client_can_opt_out_of_op_events(children):
    p = children.workload("--duration", "30", "--fast")
    wait_discovered(p.pid)

    async def read(op_events):
        c = await lmclient.connect(p.pid, op_events=op_events)
        kinds = set()
        n = 0
        async for msg in c:
            kinds.add(type(msg).__name__)
            n += isinstance(msg, Sample)
            if n >= 5:
                break
        await c.close()
        return kinds
    assert "OpEvents" not in run_async(read(False))
    assert "OpEvents" in run_async(read(True))


def test_agent_in_a_forked_child_does_nothing(runtime_dir):
    from loopmon.monitor import Monitor
    from loopmon.telemetry.agent import Agent
    agent = Agent(sample_period=0.05).start()
    try:
        agent.attach(Monitor(backend="selector"))
        sock = agent.unix_path
        pid = os.fork()
        if pid == 0:                                  # the child: both calls must be no-ops
            try:
                agent.attach(Monitor(backend="selector"))
                agent.close("child exiting")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert os.path.exists(sock)
        assert sorted(os.listdir(runtime_dir)) == sorted([f"{os.getpid()}.json",
                                                          f"{os.getpid()}.sock"])
        assert run_async(lmclient.connect(os.getpid())).hello.pid == os.getpid()
    finally:
        agent.close()
    assert os.listdir(runtime_dir) == []


def test_stream_follows_the_programs_next_loop(tmp_path, children):
    """Two asyncio.run() calls: one connection sees both loops, then Goodbye at exit."""
    script = tmp_path / "two_loops.py"
    script.write_text(
        "import asyncio\n"
        "async def work(n):\n"
        "    srv = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)\n"
        "    port = srv.sockets[0].getsockname()[1]\n"
        "    for _ in range(n):\n"
        "        r, w = await asyncio.open_connection('127.0.0.1', port)\n"
        "        w.close()\n"
        "        await asyncio.sleep(0.01)\n"
        "    srv.close()\n"
        "print('ready', flush=True)\n"
        "asyncio.run(work(200))\n"
        "asyncio.run(work(100))\n")
    p = children.loopmon("run", "--sample-ms", "20", str(script))
    assert p.stdout.readline().strip() == "ready"
    wait_discovered(p.pid)

    async def follow():
        c = await lmclient.connect(p.pid)
        return [m async for m in c]
    msgs = run_async(follow())
    samples = [m for m in msgs if isinstance(m, Sample)]
    # counters restart: ops_submitted drops once, when the second loop takes over
    subs = [s.counters["ops_submitted"] for s in samples]
    restarts = sum(1 for a, b in zip(subs, subs[1:]) if b < a)
    assert restarts == 1, subs
    assert isinstance(msgs[-1], Goodbye) and p.wait(10) == 0


def test_client_hello_can_lower_the_event_budget_or_refuse_op_events(children):
    """The agent subscribes with what the client asked: a lower budget, or no OpEvents at all."""
    p = children.workload("--duration", "30")
    wait_discovered(p.pid)

    async def collect(**kw):
        c = await lmclient.connect(p.pid, **kw)
        out = []
        try:
            async def read():
                async for msg in c:
                    out.append(msg)
                    if sum(isinstance(m, Sample) for m in out) >= 4:
                        return
            await asyncio.wait_for(read(), 20)
        finally:
            await c.close()
        return out

    async def both():
        return await asyncio.gather(collect(event_budget=1000), collect(op_events=False),
                                    collect())
    low, none, default = run_async(both(), timeout=60)
    budget_of = lambda msgs: [m for m in msgs if isinstance(m, Sample)][-1].counters["event_budget"]
    assert budget_of(low) == 1000
    assert budget_of(default) > 1000                      # the agent's own (20 k/s by default)
    assert not any(isinstance(m, OpEvents) for m in none)
    with pytest.raises(ValueError):
        run_async(lmclient.connect(p.pid, event_budget=-1))
