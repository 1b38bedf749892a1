"""The wheel holds the library only, under its PyPI name, typed, with one version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import serializer

pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_the_library_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "serializer", src / "serializer", ignore=shutil.ignore_patterns("__pycache__")
    )
    build = "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"
    result = subprocess.run(
        [sys.executable, "-c", build], cwd=src, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = src / "dist" / result.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert wheel.name.startswith(f"torch_serializer-{serializer.__version__}-")
    assert "Name: torch-serializer\n" in metadata
    assert f"Version: {serializer.__version__}\n" in metadata
    assert "serializer = serializer.cli:main" in entry_points
    library = [n for n in names if ".dist-info/" not in n]
    assert library and all(n.startswith("serializer/") for n in library), library
    assert not [n for n in library if n.endswith("_test.py")]
    assert "serializer/py.typed" in names
    shipped = {n for n in library if n.endswith(".py")}
    expected = {
        p.relative_to(src).as_posix()
        for p in (src / "serializer").rglob("*.py")
        if not p.name.endswith("_test.py")
    }
    assert shipped == expected
