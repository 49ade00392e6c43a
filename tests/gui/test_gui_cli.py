"""``python -m app`` as a user runs it: screenshots, bad arguments, unreachable targets, replay."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from gui_helpers import child_env


def run_app(runtime_dir, *args, timeout=90):
    env = child_env(runtime_dir)
    env["QT_QPA_PLATFORM"] = "offscreen"
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def pixel_std(path) -> float:
    from PySide6.QtGui import QImage
    img = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB32)
    assert not img.isNull(), f"{path} is not an image"
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=img.sizeInBytes())
    return float(arr.reshape(img.height(), -1)[:, : img.width() * 4].std())


def test_demo_screenshot_is_written_and_not_blank_and_child_is_gone(runtime_dir, tmp_path):
    out = tmp_path / "shot.png"
    res = run_app(runtime_dir, "--demo", "--screenshot", str(out), "--after", "5")
    assert res.returncode == 0, res.stderr
    assert out.is_file() and out.stat().st_size > 20_000
    assert pixel_std(out) > 10
    # the demo child was killed with the app: its discovery entry is gone (pruned or removed)
    from loopmon.telemetry.discovery import list_processes
    deadline = time.monotonic() + 10
    while list_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list_processes() == []


def test_bad_arguments_exit_2_with_a_message(runtime_dir):
    res = run_app(runtime_dir, "--no-such-flag")
    assert res.returncode == 2 and "usage" in res.stderr
    res = run_app(runtime_dir, "--demo", "nope")
    assert res.returncode == 2 and "invalid choice" in res.stderr
    res = run_app(runtime_dir, "--size", "huge", "--screenshot", "x.png")
    assert res.returncode == 2 and "--size" in res.stderr
    res = run_app(runtime_dir, "--attach", "1", "--replay", "f")
    assert res.returncode == 2 and "not allowed" in res.stderr


@pytest.mark.parametrize("args, expect", [
    (("--attach", "999999"), "no live loopmon process with pid 999999"),
    (("--attach", "127.0.0.1:1"), "cannot connect"),
    (("--replay", "/nonexistent/rec.lmrec"), "cannot"),
])
def test_unreachable_target_is_a_message_not_a_crash(runtime_dir, tmp_path, args, expect):
    out = tmp_path / "err.png"
    res = run_app(runtime_dir, *args, "--screenshot", str(out), "--after", "1.5")
    assert res.returncode == 0, res.stderr
    assert expect in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert out.is_file()


def test_a_recording_replays(qtbot, children, tmp_path):
    rec = tmp_path / "demo.lmrec"
    proc = children.loopmon_run("--record", str(rec), "-m", "loopmon.workloads.demo",
                                "--duration", "3")
    assert proc.wait(timeout=60) == 0
    from app.window import MainWindow
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    assert win.open_recording(str(rec)), win.last_error
    feed = win.monitor.feed
    assert feed.duration > 2.0
    full = len(win.monitor.model.recent)
    assert full > 20
    assert win.replay_bar.isVisible()
    # the slider goes back: the model is rebuilt up to that point
    win.replay_bar.slider.setValue(int(feed.duration * 10 / 2))
    half = len(win.monitor.model.recent)
    assert 0 < half < full
    assert abs(win.monitor.model.now_x() - feed.duration / 2) < 0.2
    # and forward again
    win.replay_bar.slider.setValue(win.replay_bar.slider.maximum())
    assert len(win.monitor.model.recent) == full
    # play from the start at 10x: the position moves
    win.replay_bar.speed_box.setCurrentIndex(3)
    feed.seek(0.0)
    win.replay_bar.play_button.click()
    qtbot.waitUntil(lambda: feed.position > 0.5, timeout=10_000)
    win.monitor.redraw_all()
    win.close()


def test_not_a_recording_is_refused_clearly(qtbot, tmp_path):
    junk = tmp_path / "junk.lmrec"
    junk.write_bytes(b"hello, not a recording\n" * 10)
    from app.window import MainWindow
    win = MainWindow()
    qtbot.addWidget(win)
    assert not win.open_recording(str(junk))
    assert "not a loopmon recording" in win.last_error


def test_a_truncated_recording_replays_up_to_the_cut(qtbot, children, tmp_path):
    rec = tmp_path / "cut.lmrec"
    proc = children.loopmon_run("--record", str(rec), "-m", "loopmon.workloads.demo",
                                "--duration", "2")
    assert proc.wait(timeout=60) == 0
    data = rec.read_bytes()
    cut = tmp_path / "half.lmrec"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])      # mid-frame, as a killed program leaves it
    from app.window import MainWindow
    win = MainWindow()
    qtbot.addWidget(win)
    assert win.open_recording(str(cut)), win.last_error
    assert len(win.monitor.model.recent) > 5


def test_embedding_example_renders_an_in_process_loop(runtime_dir, tmp_path):
    out = tmp_path / "embed.png"
    env = child_env(runtime_dir)
    env["QT_QPA_PLATFORM"] = "offscreen"
    from gui_helpers import REPO
    res = subprocess.run([sys.executable, str(REPO / "examples" / "embed_widget.py"),
                          "--screenshot", str(out), "--after", "3"], env=env,
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "destroyed but it is pending" not in res.stderr
    assert pixel_std(out) > 10
