"""Memory bounds, measured as peak RSS growth in a fresh process (behaviour, not timing):
save holds a bounded chunk beyond the tensors, load allocates only the result, load_into
allocates no tensor-sized buffer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
PAYLOAD = 256 * MIB

_SCRIPT = """
import json, os, sys, torch, serializer
torch.set_num_threads(1)
op, path = sys.argv[1], sys.argv[2]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def peak():  # VmHWM: ru_maxrss would carry the parent's peak across exec
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
sizes = [4 << 20] * 48 + [64 << 10] * 1024  # 192 MiB in big tensors + 64 MiB in small ones
if op in ("save", "load_into"):
    sd = {f"t{i}": torch.empty(n // 4).fill_(i) for i, n in enumerate(sizes)}
before = rss()
if op == "save":
    with open(path, "wb") as f:
        serializer.save(sd, f)
elif op == "load":
    with open(path, "rb") as f:
        out = serializer.load(f)
else:
    with open(path, "rb") as f:
        serializer.load_into(sd, f)
print(json.dumps({"growth": peak() - before, "payload": sum(sizes)}))
"""


def _run(op: str, path: str) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, op, path], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["payload"] == PAYLOAD
    return result


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("memory") / "sd.stream")
    _run("save", path)
    return path


def test_save_holds_a_bounded_chunk(stream: str) -> None:
    growth = _run("save", stream + ".again")["growth"]
    assert growth < 64 * MIB, f"save grew RSS by {growth / MIB:.0f} MiB for 256 MiB"


def test_load_allocates_only_the_result(stream: str) -> None:
    growth = _run("load", stream)["growth"]
    assert growth < 1.05 * PAYLOAD + 16 * MIB, f"load grew RSS by {growth / MIB:.0f} MiB"


def test_load_into_allocates_no_tensor_sized_buffer(stream: str) -> None:
    growth = _run("load_into", stream)["growth"]
    assert growth < 32 * MIB, f"load_into grew RSS by {growth / MIB:.0f} MiB"
