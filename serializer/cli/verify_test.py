"""`serializer verify`, end to end in a subprocess: intact, damaged, truncated, not a stream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import serializer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(serializer.__file__)))
MARK = 0x5A  # the bytes of the tensor "target", to find its record in the file


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "serializer", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def sample() -> dict[str, Any]:
    target = torch.full((4096,), MARK, dtype=torch.uint8)
    return {
        "first": torch.randn(32, 32),
        "target": target,
        "target_view": target[100:200],  # the same record
        "last": torch.arange(100, dtype=torch.int32),
    }


def write(path: Path, *objs: Any) -> bytes:
    with open(path, "wb") as f:
        for obj in objs:
            serializer.save(obj, f)
    return path.read_bytes()


def test_intact(tmp_path: Path) -> None:
    path = tmp_path / "model.srlz"
    data = write(path, sample())
    result = cli("verify", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{path}: intact: 1 stream, 4 tensors, 3 records ({32 * 32 * 4 + 4096 + 400} bytes of "
        f"tensor data); every checksum matches ({len(data)} bytes read)"
    )
    assert "(done)" in result.stderr  # plain progress lines: stderr is a pipe
    assert "\r" not in result.stderr
    quiet = cli("verify", "--quiet", str(path))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_one_flipped_payload_byte(tmp_path: Path) -> None:
    path = tmp_path / "model.srlz"
    data = bytearray(write(path, sample()))
    at = data.find(bytes([MARK]) * 4096)
    assert at > 0
    data[at + 1234] ^= 0x01
    path.write_bytes(data)
    result = cli("verify", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert "checksum mismatch in storage 1" in result.stderr
    assert "used by 'target', 'target_view')" in result.stderr


def test_every_key_of_a_bad_record_is_named(tmp_path: Path) -> None:
    target = torch.full((1000,), MARK, dtype=torch.uint8)
    path = tmp_path / "views.srlz"
    data = bytearray(write(path, {f"view{i}": target[i:] for i in range(5)}))
    data[data.find(bytes([MARK]) * 1000) + 500] ^= 0x01
    path.write_bytes(data)
    result = cli("verify", str(path))
    assert result.returncode == 1
    assert "all 5 keys of that record: view0, view1, view2, view3, view4" in result.stderr


def test_truncated(tmp_path: Path) -> None:
    path = tmp_path / "model.srlz"
    data = write(path, sample())
    at = data.find(bytes([MARK]) * 4096)
    path.write_bytes(data[: at + 1000])
    result = cli("verify", str(path))
    assert result.returncode == 1
    assert "stream truncated in storage 1" in result.stderr
    assert "target" in result.stderr
    assert "(failed)" in result.stderr
    path.write_bytes(data[:-1])  # the end marker
    assert cli("verify", str(path)).returncode == 1


def test_not_a_stream(tmp_path: Path) -> None:
    pickle_file = tmp_path / "model.pt"
    torch.save(sample(), pickle_file)
    result = cli("verify", str(pickle_file))
    assert result.returncode == 2
    assert "not a serializer stream" in result.stderr
    text = tmp_path / "README"
    text.write_text("not a stream, but long enough to hold a preamble of 48 bytes\n")
    assert cli("verify", str(text)).returncode == 2
    empty = tmp_path / "empty.srlz"
    empty.write_bytes(b"")
    assert cli("verify", str(empty)).returncode == 2


def test_every_stream_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "updates.srlz"
    data = bytearray(write(path, {"step": 1, "w": torch.zeros(8)}, sample()))
    result = cli("verify", str(path))
    assert result.returncode == 0, result.stderr
    assert "intact: 2 streams, 5 tensors" in result.stdout
    at = data.find(bytes([MARK]) * 4096)
    data[at] ^= 0x80
    path.write_bytes(data)
    result = cli("verify", str(path))
    assert result.returncode == 1
    assert "(stream 2, at byte" in result.stderr and "target" in result.stderr
    path.write_bytes(data[:at] + b"garbage")  # cut inside the second stream
    assert cli("verify", str(path)).returncode == 1
