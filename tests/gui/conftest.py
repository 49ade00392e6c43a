"""GUI test fixtures: Qt offscreen, a private loopmon runtime dir, real children, qasync.

``QT_QPA_PLATFORM=offscreen`` is set here, before anything imports Qt, so the suite needs no
display.  Children run as ``sys.executable -m loopmon run ...`` with ``PYTHONPATH`` at the repo
root (they import the working tree) and a private ``LOOPMON_RUNTIME_DIR`` (discovery sees only
this test's children, never another engineer's); they are killed at teardown.

``qloop`` gives the app's shared qasync loop and, at teardown, lets pending callbacks run and
releases it — otherwise the thread keeps a "running loop" mark and a later ``asyncio.run()`` in
another test file refuses to start.
"""
from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# pytest-qt provides qtbot/qapp; without it (a venv with loopmon-asyncio[gui,test] but not
# [gui-test]) say so once instead of erroring in every test
pytest.importorskip("pytestqt", reason="GUI tests need pytest-qt: pip install loopmon-asyncio[gui,test]")
pytest.importorskip("PySide6", reason="GUI tests need PySide6: pip install loopmon-asyncio[gui]")

from gui_helpers import REPO, Children  # noqa: E402


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch):
    d = tempfile.mkdtemp(prefix="lmg-")     # short: Unix socket paths are limited
    monkeypatch.setenv("LOOPMON_RUNTIME_DIR", d)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def children(runtime_dir):
    c = Children(runtime_dir)
    yield c
    c.kill_all()


@pytest.fixture
def qloop(qapp, qtbot):
    from app.asyncbridge import qt_asyncio_loop, release_shared_loop
    loop = qt_asyncio_loop()
    yield loop
    qtbot.wait(50)            # let cancelled tasks run their last steps
    release_shared_loop()


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gui)
