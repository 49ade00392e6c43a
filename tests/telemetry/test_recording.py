"""Recordings: `loopmon run --record`, replay, truncation, the size cap, `stat` on a file."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loopmon.telemetry import wire
from loopmon.telemetry.messages import Goodbye, Hello, History, OpEvents, Outstanding, Sample
from loopmon.telemetry.recording import RecordingError, RecordingWriter, read_recording

from telemetry_helpers import WORKLOAD, child_env


def _record(path, *, duration="1.5", env=None):
    r = subprocess.run([sys.executable, "-m", "loopmon", "run", "--record", str(path),
                        "--sample-ms", "20", str(WORKLOAD), "--duration", duration],
                       env=env or child_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    import tempfile
    env = child_env(LOOPMON_RUNTIME_DIR=tempfile.mkdtemp(prefix="lmr-"))
    path = tmp_path_factory.mktemp("rec") / "session.lmrec"
    _record(path, env=env)
    return path


def test_replay_has_the_whole_session(recording):
    msgs = list(read_recording(str(recording)))
    assert isinstance(msgs[0], Hello) and msgs[0].argv[0].endswith("workload.py")
    assert isinstance(msgs[1], History) and isinstance(msgs[2], Outstanding)
    samples = [m for m in msgs if isinstance(m, Sample)]
    assert len(samples) >= 20                        # ~1.5 s at 20 ms
    assert sum(len(m.events) for m in msgs if isinstance(m, OpEvents)) > 100
    assert isinstance(msgs[-1], Goodbye) and msgs[-1].reason == "program exited"
    assert samples[-1].counters["closed"]


def test_truncated_recording_replays_up_to_the_cut(recording, tmp_path):
    data = recording.read_bytes()
    full = list(read_recording(str(recording)))
    for cut in (len(data) // 3, len(data) // 2 + 7, len(data) - 1):
        part = tmp_path / f"cut{cut}.lmrec"
        part.write_bytes(data[:cut])
        msgs = list(read_recording(str(part)))
        assert msgs and isinstance(msgs[0], Hello)
        assert msgs == full[:len(msgs)] and len(msgs) < len(full)


def test_not_a_recording(tmp_path):
    bad = tmp_path / "bad.lmrec"
    bad.write_bytes(b"PK\x03\x04 not a recording at all")
    with pytest.raises(RecordingError, match="not a loopmon recording"):
        read_recording(str(bad))
    with pytest.raises(RecordingError, match="cannot read recording"):
        read_recording(str(tmp_path / "missing.lmrec"))
    future = tmp_path / "future.lmrec"
    future.write_bytes(b"LMONREC\nLMON\x09\x00")
    with pytest.raises(RecordingError, match="major version 9"):
        read_recording(str(future))


def test_size_cap_stops_with_a_final_frame(tmp_path):
    import tempfile
    path = tmp_path / "capped.lmrec"
    env = child_env(LOOPMON_RECORD_MAX_MB="0.05", LOOPMON_RUNTIME_DIR=tempfile.mkdtemp())
    r = _record(path, duration="2", env=env)
    assert "size limit" in r.stderr                 # said in the log
    assert path.stat().st_size <= 0.05 * (1 << 20)
    msgs = list(read_recording(str(path)))
    assert isinstance(msgs[-1], Goodbye) and "size limit of 0.05 MiB" in msgs[-1].reason


def test_writer_unit(tmp_path):
    path = tmp_path / "w.lmrec"
    w = RecordingWriter(str(path), max_bytes=8192)
    assert w.write(Goodbye("not last")) and w.active
    while w.write(OpEvents([(i, 6, 1.0, i) for i in range(50)])):
        pass
    assert not w.active and path.stat().st_size <= 8192
    w.close("again")                                 # idempotent
    msgs = list(read_recording(str(path)))
    assert msgs[0] == Goodbye("not last") and "size limit" in msgs[-1].reason


def test_stat_reads_a_recording(recording):
    r = subprocess.run([sys.executable, "-m", "loopmon", "stat", str(recording), "--json"],
                       env=child_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["counters"]["ops_submitted"] > 0 and st["counters"]["closed"] is True
    assert st["outstanding"] == [] and st["alerts"] == [] and st["ended"] == "program exited"


def test_corrupt_frame_in_the_middle_raises(recording, tmp_path):
    import struct
    data = bytearray(recording.read_bytes())
    pos = 14                                       # file magic + stream header
    while pos < len(data) // 2:                    # walk to a frame boundary mid-file
        pos += 4 + struct.unpack_from(">I", data, pos)[0]
    data[pos:pos + 5] = b"\xff\xff\xff\xff\x01"      # its length prefix: garbage
    path = tmp_path / "corrupt.lmrec"
    path.write_bytes(bytes(data))
    with pytest.raises(wire.ProtocolError):
        list(read_recording(str(path)))
