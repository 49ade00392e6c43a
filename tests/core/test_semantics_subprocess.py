"""Pipes (connect_read_pipe / connect_write_pipe over os.pipe) and subprocesses
(create_subprocess_exec/shell, loop.subprocess_exec with a SubprocessProtocol): stdin/stdout/
stderr, communicate, return codes, kill/terminate, many short-lived children — every child reaped.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)

PY = sys.executable


def _assert_reaped(pids):
    """No pid of ours may linger as a zombie (or at all) once the loop said it exited."""
    me = psutil.Process()
    children = {c.pid for c in me.children(recursive=False)}
    leftover = children & set(pids)
    assert not leftover, f"children not reaped: {leftover}"


# ---------------------------------------------------------------- pipes

class PipeReader(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.events: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def data_received(self, data):
        if self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


def test_connect_read_pipe(aloop, arun, quiescent):
    rfd, wfd = os.pipe()
    payload = os.urandom(1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        rfile = open(rfd, "rb", buffering=0)
        tr, proto = await loop.connect_read_pipe(PipeReader, rfile)
        assert tr.get_extra_info("pipe") is rfile

        def writer():
            with open(wfd, "wb", buffering=0) as w:
                view = memoryview(payload)
                while view:
                    n = w.write(view[:65536])
                    view = view[n:]
        await loop.run_in_executor(None, writer)         # writes, then closes: EOF
        assert await asyncio.wait_for(proto.lost, 30) is None
        assert proto.events == ["made", "data", "eof", "lost"]
        await quiescent()
        return bytes(proto.data)
    assert arun(main()) == payload


def test_read_pipe_pause_resume(aloop, arun):
    rfd, wfd = os.pipe()

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await loop.connect_read_pipe(PipeReader, open(rfd, "rb", buffering=0))
        tr.pause_reading()
        if sys.version_info >= (3, 11):      # 3.10's _UnixReadPipeTransport lacks is_reading()
            assert not tr.is_reading()
        os.write(wfd, b"while paused")
        for _ in range(10):
            await asyncio.sleep(0.005)
        assert bytes(proto.data) == b""
        tr.resume_reading()
        while len(proto.data) < 12:
            await asyncio.sleep(0.005)
        os.close(wfd)
        await asyncio.wait_for(proto.lost, 30)
        assert bytes(proto.data) == b"while paused"
    arun(main())


def test_read_pipe_eof_while_paused(aloop, arun):
    """The writer writes and closes while we are paused: after resume, data, EOF, lost."""
    rfd, wfd = os.pipe()

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await loop.connect_read_pipe(PipeReader, open(rfd, "rb", buffering=0))
        tr.pause_reading()
        os.write(wfd, b"a" * 30000)
        os.close(wfd)
        for _ in range(10):
            await asyncio.sleep(0.005)
        assert proto.events == ["made"], proto.events
        tr.resume_reading()
        assert await asyncio.wait_for(proto.lost, 30) is None
        assert proto.events == ["made", "data", "eof", "lost"]
        assert bytes(proto.data) == b"a" * 30000
    arun(main())


class PipeWriter(asyncio.Protocol):
    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()
        self.paused = 0

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.paused += 1

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_connect_write_pipe(aloop, arun, quiescent):
    rfd, wfd = os.pipe()
    payload = os.urandom(2 * 1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()

        def reader():
            h, n = hashlib.sha256(), 0
            with open(rfd, "rb", buffering=0) as r:
                while chunk := r.read(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
            return n, h.hexdigest()
        rx = loop.run_in_executor(None, reader)
        tr, proto = await loop.connect_write_pipe(PipeWriter, open(wfd, "wb", buffering=0))
        assert tr.can_write_eof()
        tr.write(payload)                          # more than a pipe holds: buffered
        assert proto.paused >= 1, "pause_writing expected with 2 MiB queued on a pipe"
        tr.write_eof()                             # closes after the buffer drains
        assert await asyncio.wait_for(proto.lost, 60) is None
        await quiescent()
        return await asyncio.wait_for(rx, 60)
    n, digest = arun(main())
    assert n == len(payload) and digest == hashlib.sha256(payload).hexdigest()


def test_write_pipe_reader_goes_away(aloop, arun):
    rfd, wfd = os.pipe()

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await loop.connect_write_pipe(PipeWriter, open(wfd, "wb", buffering=0))
        tr.write(b"hello")
        await asyncio.sleep(0.01)
        assert os.read(rfd, 100) == b"hello"
        os.close(rfd)
        exc = await asyncio.wait_for(proto.lost, 30)
        assert exc is None or isinstance(exc, BrokenPipeError)
    arun(main())


# ---------------------------------------------------------------- subprocesses

def test_create_subprocess_exec_communicate(aloop, arun):
    code = ("import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]); "
            "sys.stderr.write('err:%d' % len(d)); sys.exit(3)")
    payload = os.urandom(500_000)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(payload)
        assert proc.returncode == 3
        return proc.pid, out, err
    pid, out, err = arun(main())
    assert out == payload[::-1]
    assert err == b"err:%d" % len(payload)
    _assert_reaped([pid])


def test_subprocess_line_dialogue(aloop, arun, quiescent):
    code = ("import sys\n"
            "for line in sys.stdin:\n"
            "    sys.stdout.write(line.upper()); sys.stdout.flush()\n")

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-u", "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        for i in range(50):
            proc.stdin.write(b"line %d\n" % i)
            await proc.stdin.drain()
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"LINE %d\n" % i
        proc.stdin.close()
        assert await proc.stdout.read() == b""
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await quiescent()
        return proc.pid
    _assert_reaped([arun(main())])


def test_subprocess_shell(aloop, arun):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo hello; echo oops 1>&2; exit 7",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc, out, err
    proc, out, err = arun(main())
    assert (proc.returncode, out, err) == (7, b"hello\n", b"oops\n")
    _assert_reaped([proc.pid])


@pytest.mark.parametrize("how,sig", [("kill", signal.SIGKILL), ("terminate", signal.SIGTERM),
                                     ("send_signal", signal.SIGINT)])
def test_subprocess_kill_terminate(aloop, arun, how, sig):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import signal, sys, time\n"
                      "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
                      "print('ready', flush=True); time.sleep(60)",
            stdout=asyncio.subprocess.PIPE)
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        assert proc.returncode is None
        if how == "send_signal":
            proc.send_signal(sig)
        else:
            getattr(proc, how)()
        assert await asyncio.wait_for(proc.wait(), 30) == -sig
        await proc.stdout.read()
        return proc.pid
    _assert_reaped([arun(main())])


def test_many_short_lived_children(aloop, arun):
    true = "/bin/true" if os.path.exists("/bin/true") else "true"

    async def one(i, sem):
        async with sem:
            if i % 3 == 0:
                proc = await asyncio.create_subprocess_shell(f"exit {i % 5}")
                rc = await proc.wait()
                assert rc == i % 5
            elif i % 3 == 1:
                proc = await asyncio.create_subprocess_exec(true)
                assert await proc.wait() == 0
            else:
                proc = await asyncio.create_subprocess_exec(
                    "echo", str(i), stdout=asyncio.subprocess.PIPE)
                out, _ = await proc.communicate()
                assert out == b"%d\n" % i and proc.returncode == 0
            return proc.pid

    async def main():
        sem = asyncio.Semaphore(8)
        return await asyncio.gather(*(one(i, sem) for i in range(60)))
    _assert_reaped(arun(main(), timeout=110))


class SubProto(asyncio.SubprocessProtocol):
    def __init__(self):
        self.events: list[str] = []
        self.out = {1: bytearray(), 2: bytearray()}
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.events.append("made")

    def pipe_data_received(self, fd, data):
        self.out[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(f"pipe{fd}_lost")

    def process_exited(self):
        self.events.append("exited")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.done.set_result(exc)


def test_loop_subprocess_exec_protocol(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await loop.subprocess_exec(
            SubProto, PY, "-c",
            "import sys; sys.stdout.write(sys.stdin.read()); sys.stderr.write('E'); sys.exit(5)")
        assert tr.get_pid() > 0
        stdin = tr.get_pipe_transport(0)
        stdin.write(b"through stdin")
        stdin.close()
        assert await asyncio.wait_for(proto.done, 30) is None
        assert tr.get_returncode() == 5
        tr.close()
        return tr.get_pid(), proto
    pid, proto = arun(main())
    assert bytes(proto.out[1]) == b"through stdin" and bytes(proto.out[2]) == b"E"
    assert proto.events[0] == "made" and proto.events[-1] == "lost"
    assert sorted(proto.events[1:-1]) == sorted(["pipe0_lost", "pipe1_lost", "pipe2_lost",
                                                 "exited"])
    _assert_reaped([pid])


def test_loop_subprocess_shell_and_errors(aloop, arun):
    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await loop.subprocess_shell(SubProto, "printf abc", stdin=None)
        await asyncio.wait_for(proto.done, 30)
        assert tr.get_returncode() == 0 and bytes(proto.out[1]) == b"abc"
        tr.close()
        with pytest.raises(ValueError):          # shell needs a str command
            await loop.subprocess_shell(SubProto, ["echo", "x"])
        with pytest.raises(ValueError):          # universal_newlines is not supported
            await loop.subprocess_exec(SubProto, "true", universal_newlines=True)
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/definitely-not-a-program")
        return tr.get_pid()
    _assert_reaped([arun(main())])


def test_communicate_with_child_that_ignores_stdin(aloop, arun):
    """communicate() swallows the BrokenPipe of a child that exits without reading."""
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.exit(0)", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"x" * (4 * 1024 * 1024))
        assert out == b"" and proc.returncode == 0
        return proc.pid
    _assert_reaped([arun(main())])


def test_subprocess_kwargs_reach_popen(aloop, arun, tmp_path):
    """cwd, env, stdin=DEVNULL, stdout to a file, stderr to a raw fd: passed through to Popen."""
    out_path = tmp_path / "out.txt"
    err_r, err_w = os.pipe()

    async def main():
        loop = asyncio.get_running_loop()
        with open(out_path, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", "import os, sys; print(os.getcwd()); print(os.environ['LM_TEST']); "
                          "sys.stderr.write('to fd'); print(repr(sys.stdin.read()))",
                cwd=str(tmp_path), env={**os.environ, "LM_TEST": "value"},
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err_w)
            assert proc.stdin is None and proc.stdout is None and proc.stderr is None
            rc = await asyncio.wait_for(proc.wait(), 30)
        os.close(err_w)
        err = await loop.run_in_executor(None, os.read, err_r, 100)
        os.close(err_r)
        return proc.pid, rc, err
    pid, rc, err = arun(main())
    assert rc == 0 and err == b"to fd"
    lines = out_path.read_text().splitlines()
    assert lines == [os.path.realpath(tmp_path), "value", "''"]
    _assert_reaped([pid])


def test_subprocess_closes_stdout_before_exiting(aloop, arun):
    """The child closes its stdout, lives on a little, then exits: connection_lost comes only
    after both the pipe EOF and the exit."""
    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await loop.subprocess_exec(
            SubProto, PY, "-c",
            "import os, sys, time; sys.stdout.write('bye'); sys.stdout.flush(); os.close(1); "
            "time.sleep(0.3); sys.exit(4)", stdin=None, stderr=None)
        assert await asyncio.wait_for(proto.done, 30) is None
        assert tr.get_returncode() == 4
        tr.close()
        return tr.get_pid(), proto
    pid, proto = arun(main())
    assert bytes(proto.out[1]) == b"bye"
    # (pipe EOF normally comes first, but under load both can land in one loop iteration)
    assert proto.events[0] == "made" and proto.events[-1] == "lost"
    assert sorted(proto.events[1:-1]) == ["exited", "pipe1_lost"]
    _assert_reaped([pid])
