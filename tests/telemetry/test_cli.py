"""`loopmon run / ps / stat` as a user types them: passthrough, JSON output, one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from telemetry_helpers import WORKLOAD, child_env, wait_discovered

PROG = '''\
import asyncio, sys
async def main():
    await asyncio.sleep(0.05)
    return type(asyncio.get_running_loop()).__module__
mod = asyncio.run(main())
print("name", __name__, "argv", sys.argv[1:], "loop", mod, "path0", sys.path[0])
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
'''


def _loopmon(*args, cwd=None, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "loopmon", *args], env=env or child_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_run_script_passthrough(tmp_path, runtime_dir):
    script = tmp_path / "prog.py"
    script.write_text(PROG)
    r = _loopmon("run", str(script), "3", "--listen", "x", "-m")
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == [f"name __main__ argv ['3', '--listen', 'x', '-m'] "
                                     f"loop loopmon.loop path0 {tmp_path}"]
    assert r.stderr == "to stderr\n"
    assert os.listdir(runtime_dir) == []                   # socket + discovery file removed


def test_run_module_passthrough(tmp_path, runtime_dir):
    (tmp_path / "progmod.py").write_text(PROG)
    r = _loopmon("run", "--sample-ms", "20", "-m", "progmod", "0", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("name __main__ argv ['0', '--help'] loop loopmon.loop path0 ")
    assert os.path.samefile(r.stdout.split("path0 ")[1].strip(), tmp_path)


def test_run_uncaught_exception_and_ctrl_c_like_python(tmp_path, runtime_dir):
    script = tmp_path / "boom.py"
    script.write_text("import asyncio\nasync def f():\n    raise ValueError('boom')\n"
                      "asyncio.run(f())\n")
    r = _loopmon("run", str(script))
    assert r.returncode == 1 and r.stderr.strip().endswith("ValueError: boom")
    script = tmp_path / "forever.py"
    script.write_text("import asyncio\nasync def f():\n    print('ready', flush=True)\n"
                      "    await asyncio.sleep(60)\nasyncio.run(f())\n")
    codes = {}
    for how in ("plain", "loopmon"):
        cmd = ([sys.executable, str(script)] if how == "plain"
               else [sys.executable, "-m", "loopmon", "run", str(script)])
        p = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
        codes[how] = (p.returncode, err.strip().splitlines()[-1])
    assert codes["loopmon"] == codes["plain"]
    assert codes["plain"][1] == "KeyboardInterrupt"


@pytest.mark.parametrize("args, message", [
    ((), "a script (or -m module) to run is required"),
    (("--sample-ms", "0", "x.py"), "must be positive"),
    (("--fault", "nope", "x.py"), "unknown fault 'nope'"),
    (("--listen", "10.1.2.3:7000", "x.py"), "non-loopback"),
    (("--listen", "nonsense", "x.py"), "bad listen address"),
    (("-m",), "expected one argument"),
])
def test_run_bad_arguments_exit_2(args, message, runtime_dir):
    r = _loopmon("run", *args)
    assert r.returncode == 2 and message in r.stderr


def test_run_missing_script_and_bind_failure(tmp_path, runtime_dir):
    r = _loopmon("run", str(tmp_path / "missing.py"))
    assert r.returncode != 0 and "missing.py" in r.stderr and len(r.stderr.splitlines()) == 1
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        r = _loopmon("run", "--listen", f"127.0.0.1:{port}", str(WORKLOAD), "--duration", "0.1")
    finally:
        busy.close()
    assert r.returncode == 1 and r.stderr.startswith("loopmon run: cannot serve telemetry on")
    assert len(r.stderr.splitlines()) == 1 and "ready" not in r.stdout


def test_ps_json_and_stat_json(children, runtime_dir):
    p = children.workload("--duration", "30", "--pending", "2")
    wait_discovered(p.pid)
    r = _loopmon("ps", "--json")
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert [e["pid"] for e in listing] == [p.pid]
    e = listing[0]
    assert e["endpoint"] == f"unix:{runtime_dir}/{p.pid}.sock" and e["backend"] == "selector"
    assert "workload.py" in e["command"] and e["uptime"] >= 0 and "token" not in e
    text = _loopmon("ps").stdout
    assert str(p.pid) in text and "selector" in text
    r = _loopmon("stat", str(p.pid), "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert set(st) >= {"counters", "outstanding", "alerts"}
    c = st["counters"]
    for name in ("ops_outstanding", "ops_outstanding_by_kind", "ops_submitted", "ops_completed",
                 "ops_cancelled", "ops_failed", "bytes_received", "bytes_delivered",
                 "bytes_sent", "buffers_live", "buffer_bytes_live", "loop_lag"):
        assert name in c
    assert c["ops_submitted"] > 0 and c["ops_outstanding"] >= 3
    assert {op["kind"] for op in st["outstanding"]} >= {"accept"}
    assert all({"op_id", "kind", "fd", "age"} <= set(op) for op in st["outstanding"])
    assert isinstance(st["alerts"], list)
    r = _loopmon("stat", f"unix:{runtime_dir}/{p.pid}.sock")       # by address too
    assert r.returncode == 0 and f"pid {p.pid}" in r.stdout
    p.kill()
    p.wait(10)
    r = _loopmon("ps", "--json")
    assert json.loads(r.stdout) == []                               # stale entry pruned
    assert not os.path.exists(os.path.join(runtime_dir, f"{p.pid}.json"))


def test_stat_errors_are_one_line(tmp_path, runtime_dir):
    not_rec = tmp_path / "notes.txt"
    not_rec.write_text("hello")
    cases = [("999999",), ("unix:" + str(tmp_path / "nothing.sock"),), ("127.0.0.1:1",),
             (str(not_rec),), ("host:notaport",)]
    for args in cases:
        r = _loopmon("stat", *args, "--timeout", "3")
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith("loopmon stat: ") and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stdout == ""
    r = _loopmon("stat")
    assert r.returncode == 2
    r = _loopmon("frobnicate")
    assert r.returncode == 2


def test_serve_from_code(tmp_path, children, runtime_dir):
    """A program that starts the agent itself instead of running under `loopmon run`."""
    from loopmon import client as lmclient
    from telemetry_helpers import run_async
    from loopmon.telemetry.messages import Goodbye, Hello, History
    script = tmp_path / "served.py"
    script.write_text(
        "import asyncio, sys\n"
        "from loopmon.runner import serve\n"
        "agent = serve(sample_ms=20)\n"
        "async def main():\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(float(sys.argv[1]))\n"
        "asyncio.run(main())\n")
    p = subprocess.Popen([sys.executable, str(script), "1.5"], env=child_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children.procs.append(p)
    assert p.stdout.readline().strip() == "ready"
    wait_discovered(p.pid)

    async def follow():
        c = await lmclient.connect(p.pid)
        return [c.hello] + [m async for m in c]
    msgs = run_async(follow())
    assert isinstance(msgs[0], Hello) and msgs[0].sample_period == 0.02
    assert isinstance(msgs[1], History) and isinstance(msgs[-1], Goodbye)
    assert p.wait(10) == 0
    assert os.listdir(runtime_dir) == []


def test_record_to_unwritable_path_is_a_one_line_error(tmp_path, runtime_dir):
    r = _loopmon("run", "--record", str(tmp_path / "no" / "such" / "dir.lmrec"), str(WORKLOAD),
                 "--duration", "0.1")
    assert r.returncode == 1 and r.stderr.startswith("loopmon run: cannot write the recording")
    assert len(r.stderr.splitlines()) == 1 and "ready" not in r.stdout


def test_forked_child_leaves_the_parents_agent_alone(tmp_path, children, runtime_dir):
    """A forked child (multiprocessing 'fork') runs its own asyncio.run and exits: the
    parent's socket and discovery file must survive, and the parent stays reachable."""
    from loopmon import client as lmclient
    from telemetry_helpers import run_async
    script = tmp_path / "forker.py"
    script.write_text(
        "import asyncio, os, sys\n"
        "async def child():\n"
        "    await asyncio.sleep(0.1)\n"
        "async def main():\n"
        "    await asyncio.sleep(0.3)\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        asyncio.run(child())\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(30)\n"
        "asyncio.run(main())\n")
    p = children.loopmon("run", str(script))
    assert p.stdout.readline().strip() == "ready"
    entry = wait_discovered(p.pid)
    assert os.path.exists(entry.endpoint[5:])

    async def hello():
        c = await lmclient.connect(p.pid)
        await c.close()
        return c.hello
    assert run_async(hello()).pid == p.pid


def test_programs_written_for_loopmon_are_attached_too(tmp_path, children, runtime_dir):
    """loop_factory=loopmon.new_event_loop, and a program's own loopmon.install()."""
    from loopmon import client as lmclient
    from telemetry_helpers import run_async
    # asyncio.Runner (the loop_factory way) arrived in 3.11
    variants = ("factory", "install") if sys.version_info >= (3, 11) else ("install",)
    for variant in variants:
        script = tmp_path / f"{variant}.py"
        start = ("asyncio.Runner(loop_factory=loopmon.new_event_loop).run(main())"
                 if variant == "factory" else "loopmon.install(); asyncio.run(main())")
        script.write_text(
            "import asyncio, loopmon\n"
            "async def main():\n"
            "    print('ready', asyncio.get_running_loop().monitor is not None, flush=True)\n"
            "    await asyncio.sleep(30)\n" + start + "\n")
        p = children.loopmon("run", str(script))
        assert p.stdout.readline().strip() == "ready True"
        wait_discovered(p.pid)

        async def hello():
            c = await lmclient.connect(p.pid)
            await c.close()
            return c.hello
        assert run_async(hello()).backend == "selector"
        p.kill()


def test_fault_flags_reach_the_loop(tmp_path, runtime_dir):
    script = tmp_path / "faults.py"
    script.write_text("import asyncio, os\n"
                      "async def main():\n"
                      "    return asyncio.get_running_loop()\n"
                      "loop = asyncio.run(main())\n"
                      "print(os.environ.get('LOOPMON_FAULTS'), sorted(getattr(loop, '_faults', None)"
                      " or getattr(loop, 'faults', None) or []))\n")
    r = _loopmon("run", "--fault", "cancel-drops-data", "--fault", "send-keeps-buffer",
                 str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cancel-drops-data,send-keeps-buffer")
