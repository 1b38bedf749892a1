"""`serializer convert`, end to end in a subprocess: every pair of formats, both ways, bit for
bit, and the clear errors of conversions the target cannot hold.

Sources are written, and results read, with each format's own library, not with the CLI's
code.
"""

from __future__ import annotations

import inspect
import io
import itertools
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import serializer

# Slow (every conversion as a subprocess): the full suite runs it, the CI torch sweep does not.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(serializer.__file__)))
FORMATS = ["srlz", "pt", "torch-stream", "safetensors", "dcp"]
NAMES = {
    "srlz": "m.srlz",
    "pt": "m.pt",
    "torch-stream": "m.stream",
    "safetensors": "m.safetensors",
    "dcp": "m_dcp/",
}
HAS_TORCH_STREAM = True
try:
    from torch.distributed._serialization import _streaming_load, _streaming_save
except ImportError:  # torch < 2.7
    HAS_TORCH_STREAM = False


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "serializer", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def rich() -> dict[str, Any]:
    """A state dict with a view sharing its base's storage, nested values and non-tensors."""
    g = torch.Generator().manual_seed(0)
    base = torch.arange(64, dtype=torch.int64).reshape(8, 8)
    return {
        "embed.weight": torch.randn(16, 8, generator=g).bfloat16(),
        "ids": torch.arange(-5, 19, dtype=torch.int32).reshape(4, 6),
        "base": base,
        "view": base[2:6, ::2],
        "proj": torch.randn(5, 7, generator=g).t(),  # transposed
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "flags": torch.tensor([True, False, True]),
        "opt": {"step": 7, "name": "adam", "moments": {"m": torch.zeros(3, dtype=torch.float16)}},
    }


def flat() -> dict[str, Any]:
    """What safetensors holds: a flat dict of tensors, none sharing a storage."""
    g = torch.Generator().manual_seed(1)
    return {
        "embed.weight": torch.randn(16, 8, generator=g).bfloat16(),
        "ids": torch.arange(-5, 19, dtype=torch.int32).reshape(4, 6),
        "view": torch.arange(100, dtype=torch.int64)[10:60:5],  # a strided view of a larger base
        "proj": torch.randn(5, 7, generator=g).t(),
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
        "scalar": torch.tensor(2, dtype=torch.int16),
        "flags": torch.tensor([True, False, True]),
    }


def write(fmt: str, obj: Any, path: Path) -> None:
    if fmt == "srlz":
        with open(path, "wb") as f:
            serializer.save(obj, f)
    elif fmt == "pt":
        torch.save(obj, path)
    elif fmt == "torch-stream":
        with open(path, "wb") as f:
            _streaming_save(obj, f)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, path)
    else:
        import torch.distributed.checkpoint as dcp

        no_dist = {"no_dist": True} if "no_dist" in inspect.signature(dcp.save).parameters else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch < 2.5 has no no_dist: it warns and assumes it
            dcp.save(obj, storage_writer=dcp.FileSystemWriter(path), **no_dist)


def read(fmt: str, path: Path) -> Any:
    if fmt == "srlz":
        with open(path, "rb") as f:
            return serializer.load(f)
    if fmt == "pt":
        return torch.load(path, weights_only=True)
    if fmt == "torch-stream":
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _streaming_load(f)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = path.with_suffix(".reference.pt")
        dcp_to_torch_save(path, buf)
    return torch.load(buf, weights_only=True)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same(expected: Any, actual: Any, where: str = "") -> None:
    """Same structure, same non-tensor values; tensors of the same dtype, shape and bytes."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype, where
        assert actual.shape == expected.shape, where
        assert torch.equal(bits(actual), bits(expected)), where
    elif isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), where
        assert sorted(actual) == sorted(expected), where
        for k in expected:
            assert_same(expected[k], actual[k], f"{where}.{k}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{where}.{i}")
    else:
        assert actual == expected, where


def needs(*fmts: str) -> None:
    if "safetensors" in fmts:
        pytest.importorskip("safetensors")
    if "torch-stream" in fmts and not HAS_TORCH_STREAM:
        pytest.skip("torch streams need torch >= 2.7")


PAIRS = [(a, b) for a, b in itertools.permutations(FORMATS, 2)]


@pytest.mark.parametrize(("src_fmt", "dst_fmt"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_conversion_is_bit_exact(tmp_path: Path, src_fmt: str, dst_fmt: str) -> None:
    needs(src_fmt, dst_fmt)
    obj = flat() if "safetensors" in (src_fmt, dst_fmt) else rich()
    src, dst = tmp_path / NAMES[src_fmt], tmp_path / ("out_" + NAMES[dst_fmt])
    write(src_fmt, obj, src)
    args = ["convert", str(src), str(dst) + ("/" if dst_fmt == "dcp" else "")]
    if dst_fmt == "torch-stream":  # no name tells it
        args += ["--to", "torch-stream"]
    if src_fmt == "torch-stream" and dst_fmt == "srlz":  # its content tells it, but say it once
        args += ["--from", "torch-stream"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"({src_fmt}) -> " in result.stdout and f"({dst_fmt})" in result.stdout
    got = read(dst_fmt, dst)
    assert_same(obj, got)
    keeps_views = {src_fmt, dst_fmt} <= {"srlz", "pt", "torch-stream"}
    if "base" in obj and keeps_views:
        assert got["view"].untyped_storage().data_ptr() == got["base"].untyped_storage().data_ptr()
        assert got["view"].stride() == (8, 2)
    if "base" in obj and "dcp" in (src_fmt, dst_fmt) and dst_fmt == "dcp":
        assert "share one storage" in result.stderr  # said, not silently lost


def test_round_trip_keeps_the_stream_bytes(tmp_path: Path) -> None:
    """srlz -> pt -> srlz writes the very bytes serializer.save writes."""
    src = tmp_path / "a.srlz"
    write("srlz", rich(), src)
    assert cli("convert", str(src), str(tmp_path / "b.pt")).returncode == 0
    assert cli("convert", "-q", str(tmp_path / "b.pt"), str(tmp_path / "c.srlz")).returncode == 0
    assert (tmp_path / "c.srlz").read_bytes() == src.read_bytes()


def _refused(tmp_path: Path, obj: Any, dst: str, *extra: str) -> str:
    src = tmp_path / "src.srlz"
    write("srlz", obj, src)
    result = cli("convert", str(src), str(tmp_path / dst), *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    assert not (tmp_path / dst).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.srlz"]  # no temporary file left
    return result.stderr


def test_safetensors_refuses_non_tensors(tmp_path: Path) -> None:
    needs("safetensors")
    err = _refused(tmp_path, {"w": torch.zeros(2), "step": 7}, "out.safetensors")
    assert "key 'step' holds a int, not a tensor: safetensors holds only tensors" in err
    err = _refused(tmp_path, {"w": torch.zeros(2), "opt": {"m": torch.zeros(1)}}, "o.safetensors")
    assert "key 'opt' holds a dict (a nested container), not a tensor" in err


def test_safetensors_refuses_shared_storages(tmp_path: Path) -> None:
    needs("safetensors")
    base = torch.arange(10.0)
    err = _refused(tmp_path, {"base": base, "view": base[2:5]}, "out.safetensors")
    assert "keys 'base', 'view' share one storage" in err


def test_safetensors_refuses_what_it_has_no_dtype_for(tmp_path: Path) -> None:
    needs("safetensors")
    err = _refused(tmp_path, {"z": torch.zeros(2, dtype=torch.complex128)}, "out.safetensors")
    assert "key 'z': dtype complex128 is not one safetensors holds" in err
    err = _refused(tmp_path, [torch.zeros(2)], "out.safetensors")
    assert "safetensors holds a flat dict of tensors; the source holds a list" in err


def test_this_format_refuses_sparse_tensors(tmp_path: Path) -> None:
    src = tmp_path / "sparse.pt"
    torch.save({"w": torch.zeros(2), "adjacency": torch.eye(3).to_sparse()}, src)
    result = cli("convert", str(src), str(tmp_path / "out.srlz"))
    assert result.returncode == 2
    assert "sparse_coo" in result.stderr and "(key 'adjacency')" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse.pt"]


def test_dcp_refuses_what_is_not_a_dict(tmp_path: Path) -> None:
    err = _refused(tmp_path, [torch.zeros(2)], "out_dcp", "--to", "dcp")
    assert "a DCP checkpoint holds a dict with string keys; the source holds a list" in err


def test_formats_it_cannot_tell(tmp_path: Path) -> None:
    err = _refused(tmp_path, {"w": torch.zeros(2)}, "out.xyz")
    assert "cannot tell the format from the name" in err
    src = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(2)}, src)
    result = cli("convert", "--from", "srlz", str(src), str(tmp_path / "o.pt"))
    assert result.returncode == 2 and "not a serializer stream" in result.stderr


def test_damaged_source(tmp_path: Path) -> None:
    src = tmp_path / "src.srlz"
    write("srlz", {"w": torch.full((1000,), 7, dtype=torch.uint8)}, src)
    data = bytearray(src.read_bytes())
    data[data.find(bytes([7]) * 1000) + 10] = 8
    src.write_bytes(data)
    result = cli("convert", str(src), str(tmp_path / "out.pt"))
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and "'w'" in result.stderr
    assert not (tmp_path / "out.pt").exists()


def test_weights_only_source(tmp_path: Path) -> None:
    """A torch.save file naming a global off the allowlist is refused, not executed."""
    src = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "obj": io.BytesIO(b"x")}, src)
    result = cli("convert", str(src), str(tmp_path / "out.srlz"))
    assert result.returncode == 2
    assert "weights_only" in result.stderr
