"""The wheel carries every package and the resources the app loads at run time."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib")  # 3.11+; the check is the same on every Python


def _listed_packages() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["tool"]["setuptools"]["packages"])


def test_every_package_directory_is_listed_in_pyproject():
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("loopmon", "app")
        for init in (ROOT / top).rglob("__init__.py")
    }
    missing = on_disk - _listed_packages()
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_wheel_ships_resources_and_entry_points(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info into the source tree
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".pytest_cache",
        ".hypothesis", "*.so"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{out.stdout}\n{out.stderr}")
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    resources = [n for n in names if n.startswith("app/resources/")]
    shipped = {Path(n).name for n in resources}
    expected = {p.name for p in (ROOT / "resources").rglob("*") if p.is_file()}
    assert expected <= shipped, f"resources missing from the wheel: {sorted(expected - shipped)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "loopmon = loopmon.cli:main" in text
    assert "loopmon-gui = app.main:main" in text
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    # the C core is built into the wheel wherever a compiler exists (it is an optional
    # extension: a failed build would otherwise pass unnoticed)
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc):
        assert any(n.startswith("_loopmon_speedups") and n.endswith((".so", ".pyd"))
                   for n in names), (names, out.stderr)
