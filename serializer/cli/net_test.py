"""`serializer send` / `serializer recv` over 127.0.0.1, each side a real subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import serializer
from serializer.cli.errors import CliError
from serializer.cli.net import parse_address

# Slow (sender and receiver subprocesses): the full suite runs it, the CI torch sweep does not.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(serializer.__file__)))
TIMEOUT = 300


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "serializer", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out: {proc.args}\n{err}") from None
    return proc.returncode, out, err


def listen(dst: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """A `recv` on port 0, and the port it printed."""
    receiver = spawn("recv", "0", str(dst), *extra)
    assert receiver.stdout is not None
    line = receiver.stdout.readline()  # blocks until it listens (or exits)
    if not line.strip().isdigit():
        code, out, err = finish(receiver)
        raise AssertionError(f"recv printed {line!r} and exited {code}: {err}")
    return receiver, int(line)


def sample() -> dict[str, Any]:
    base = torch.arange(256, dtype=torch.int32)
    return {
        "w": torch.randn(64, 64, generator=torch.Generator().manual_seed(0)).bfloat16(),
        "base": base,
        "view": base[::4],
        "step": 12,
    }


def save(path: Path, *objs: Any) -> bytes:
    with open(path, "wb") as f:
        for obj in objs:
            serializer.save(obj, f)
    return path.read_bytes()


def test_a_stream_file_arrives_byte_for_byte(tmp_path: Path) -> None:
    src, dst = tmp_path / "model.srlz", tmp_path / "got.srlz"
    data = save(src, sample())
    receiver, port = listen(dst)
    sender = spawn("send", str(src), f"127.0.0.1:{port}")
    code, _, err = finish(sender)
    assert code == 0, err
    assert f"sent {src} to 127.0.0.1:{port}: 1 stream, {len(data)} bytes" in err
    code, _, err = finish(receiver)
    assert code == 0, err
    assert f"listening on 127.0.0.1:{port}" in err
    assert dst.read_bytes() == data
    with open(dst, "rb") as f:
        got = serializer.load(f)
    assert torch.equal(got["w"].view(torch.int16), sample()["w"].view(torch.int16))
    assert got["view"].untyped_storage().data_ptr() == got["base"].untyped_storage().data_ptr()


def test_streams_back_to_back_and_other_formats(tmp_path: Path) -> None:
    """Two streams of a .srlz into a .srlz; a .pt source sent as a stream, received as .pt."""
    src = tmp_path / "two.srlz"
    data = save(src, {"a": torch.zeros(3)}, {"b": torch.ones(2, dtype=torch.int64)})
    receiver, port = listen(tmp_path / "two_got.srlz", "--quiet")
    assert finish(spawn("send", "-q", str(src), f"127.0.0.1:{port}"))[0] == 0
    code, out, err = finish(receiver)
    assert code == 0 and err == "", err
    assert (tmp_path / "two_got.srlz").read_bytes() == data

    pt = tmp_path / "model.pt"
    torch.save(sample(), pt)
    receiver, port = listen(tmp_path / "got.pt")
    assert finish(spawn("send", str(pt), f"localhost:{port}"))[0] == 0
    code, _, err = finish(receiver)
    assert code == 0, err
    got = torch.load(tmp_path / "got.pt", weights_only=True)
    assert got["step"] == 12 and torch.equal(got["base"], sample()["base"])
    assert got["w"].dtype == torch.bfloat16


def test_a_damaged_file_fails_on_both_sides(tmp_path: Path) -> None:
    src, dst = tmp_path / "model.srlz", tmp_path / "got.srlz"
    data = bytearray(save(src, {"a": torch.full((4096,), 3, dtype=torch.uint8)}))
    data[data.find(bytes([3]) * 4096) + 2000] = 4
    src.write_bytes(data)
    receiver, port = listen(dst)
    code, _, err = finish(spawn("send", str(src), f"127.0.0.1:{port}"))
    assert code == 1 and "checksum mismatch" in err and "'a'" in err
    code, _, err = finish(receiver)
    assert code == 1 and ("checksum mismatch" in err or "truncated" in err), err
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.srlz"]


def test_nothing_listening(tmp_path: Path) -> None:
    src = tmp_path / "model.srlz"
    save(src, sample())
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = finish(spawn("send", str(src), f"127.0.0.1:{port}", "--timeout", "5"))
    assert code == 1 and f"cannot connect to 127.0.0.1:{port}" in err


def test_addresses() -> None:
    assert parse_address("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("5000", "host:", "host:port", ":80", "h:70000"):
        with pytest.raises(CliError):
            parse_address(bad)
