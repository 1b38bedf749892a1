"""A smoke run of tools/bench_access (the full run is `nox -s bench_access`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("safetensors")
pytest.importorskip("psutil")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_access_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.bench_access", "--gib", "0.01", "--reps", "1", "--no-dcp"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| `load_keys` of one 12-byte tensor |" in result.stdout
    assert "safe_open" in result.stdout and "torch.load(mmap=True)" in result.stdout
