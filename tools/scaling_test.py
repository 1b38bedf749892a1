"""A smoke run of the scaling tool (tools/scaling.py): `--quick` in a child process, as
`nox -s scaling` runs it, writes both plots and sane data. One library (ours) and two
operations (save, then load_into from what it saved) keep it to eight child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_writes_plots_and_data(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "tools.scaling", "--quick", "--libs", "ours",
         "--ops", "save,load_into", "--out", str(tmp_path), "--workdir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for name in ("scaling_size.png", "scaling_count.png"):
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    data = json.loads((tmp_path / "scaling.json").read_text())
    results = data["results"]
    assert {(r["axis"], r["lib"], r["op"]) for r in results} == {
        (axis, lib, op)
        for axis in ("size", "count")
        for lib in ("ours",)
        for op in ("save", "load_into")
    }
    assert all("error" not in r for r in results), [r for r in results if "error" in r]
    for r in results:
        assert all(s > 0 for s in r["seconds"])
        assert r["payload"] > 0 and r["rss_growth"] < 64 << 20
    sizes = {r["x"]: r["payload"] for r in results if r["axis"] == "size"}
    assert sizes == {x: x << 20 for x in data["setup"]["sizes_mib"]}
    total = data["setup"]["total_bytes_of_count_sweep"]
    for r in results:  # a fixed total, less what does not divide evenly into the tensors
        if r["axis"] == "count":
            assert total - 4 * r["x"] < r["payload"] <= total
    assert set(data["slopes"]) == {"size", "count"}
