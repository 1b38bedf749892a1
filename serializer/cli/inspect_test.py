"""`serializer inspect`, end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import serializer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(serializer.__file__)))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "serializer", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def sample() -> dict[str, Any]:
    base = torch.arange(64, dtype=torch.int64).reshape(8, 8)
    return {
        "embed.weight": torch.randn(16, 8).bfloat16(),
        "ids": torch.arange(10, dtype=torch.int32),
        "base": base,
        "view": base[2:6, ::2],  # shares base's storage
        "scale": torch.nn.Parameter(torch.tensor(0.5)),
        "step": 3,
    }


def save(path: Path, *objs: Any) -> None:
    with open(path, "wb") as f:
        for obj in objs:
            serializer.save(obj, f)


def test_text(tmp_path: Path) -> None:
    path = tmp_path / "model.srlz"
    save(path, sample())
    result = cli("inspect", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    size = path.stat().st_size
    assert lines[0] == f"{path}: serializer stream, format 1.0, {size} bytes"
    assert lines[1].split() == ["key", "dtype", "shape", "bytes", "location", "storage"]
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert rows["embed.weight"] == ["embed.weight", "bfloat16", "[16,", "8]", "256", "cpu", "0"]
    assert rows["ids"] == ["ids", "int32", "[10]", "40", "cpu", "1"]
    assert rows["view"] == ["view", "int64", "[4,", "4]", "128", "cpu", "2"]
    assert rows["scale"] == ["scale", "float32", "[]", "4", "cpu", "3"]
    assert lines[-1].strip() == (
        f"5 tensors, {256 + 40 + 512 + 128 + 4} bytes; 4 storages, {256 + 40 + 512 + 4} bytes; "
        f"{size} bytes in all"
    )


def test_json(tmp_path: Path) -> None:
    path = tmp_path / "model.srlz"
    save(path, sample())
    result = cli("inspect", "--json", str(path))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    (stream,) = doc["streams"]
    tensors = {t["key"]: t for t in stream["tensors"]}
    assert list(tensors) == ["embed.weight", "ids", "base", "view", "scale"]
    assert tensors["embed.weight"] == {
        "key": "embed.weight", "dtype": "bfloat16", "shape": [16, 8], "nbytes": 256,
        "location": "cpu", "stride": [8, 1], "storage_offset": 0, "storage": 0,
        "requires_grad": False, "parameter": False,
    }  # fmt: skip
    assert tensors["view"]["stride"] == [8, 2] and tensors["view"]["storage_offset"] == 16
    assert tensors["scale"]["parameter"] and tensors["scale"]["requires_grad"]
    assert stream["storages"][2] == {
        "index": 2, "nbytes": 512, "location": "cpu", "keys": ["base", "view"]
    }  # fmt: skip
    assert doc["totals"] == stream["totals"] == {
        "streams": 1, "tensors": 5, "tensor_bytes": 940, "storages": 4, "storage_bytes": 812,
        "stream_bytes": path.stat().st_size,
    }  # fmt: skip


def test_streams_back_to_back(tmp_path: Path) -> None:
    path = tmp_path / "updates.srlz"
    save(path, {"a": torch.zeros(4)}, {"b": torch.ones(2, dtype=torch.float16)})
    result = cli("inspect", "--json", str(path))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [[t["key"] for t in s["tensors"]] for s in doc["streams"]] == [["a"], ["b"]]
    first = doc["streams"][0]["nbytes"]
    assert doc["streams"][1]["offset"] == first
    assert doc["totals"]["stream_bytes"] == path.stat().st_size
    text = cli("inspect", str(path)).stdout
    assert "stream 2 of 2, at byte" in text and text.splitlines()[-1].startswith("all 2 streams")


def test_not_a_stream(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(2)}, path)
    result = cli("inspect", str(path))
    assert result.returncode == 2
    assert "not a serializer stream; it looks like pt" in result.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    result = cli("inspect", str(text))
    assert result.returncode == 2 and "not a serializer stream" in result.stderr
    empty = tmp_path / "empty.srlz"
    empty.write_bytes(b"")
    result = cli("inspect", str(empty))
    assert result.returncode == 2 and "no stream in it" in result.stderr
    result = cli("inspect", str(tmp_path / "missing.srlz"))
    assert result.returncode == 1 and "No such file" in result.stderr
