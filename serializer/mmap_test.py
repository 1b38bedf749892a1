"""load(mmap=True): tensors over the file's pages, verified as far as the mode promises."""

from __future__ import annotations

import io
import os
from pathlib import Path

import psutil
import pytest
import torch

import serializer
from testing.cases import Case, assert_same


def test_catalog_loads_the_same_mapped(case: Case, tmp_path: Path) -> None:
    obj = case.build("cpu")
    path = tmp_path / "s.srlz"
    serializer.save(obj, path)
    assert_same(serializer.load(path, mmap=True, weights_only=case.weights_only), obj)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    big = {f"w{i}": torch.randn(1 << 20, generator=g) for i in range(16)}  # 64 MiB
    # odd sizes, so that later records start at offsets no dtype is aligned to
    return big | {"i16": torch.arange(7, dtype=torch.int16), "f64": torch.ones(3).double()}


def test_pages_are_read_only_when_touched(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "s.srlz"
    serializer.save(state, path)
    process = psutil.Process()
    before = process.memory_info().rss
    loaded = serializer.load(path, mmap=True)
    grown = process.memory_info().rss - before
    assert grown < 16 << 20, f"{grown} bytes resident before any tensor is touched"
    for key, t in state.items():
        assert torch.equal(loaded[key], t), key
    assert process.memory_info().rss - before > 48 << 20, "touching reads the pages"


def test_writes_stay_in_the_process(tmp_path: Path) -> None:
    path = tmp_path / "s.srlz"
    serializer.save({"a": torch.zeros(4)}, path)
    before = path.read_bytes()
    loaded = serializer.load(path, mmap=True)
    loaded["a"] += 1
    assert path.read_bytes() == before
    assert torch.equal(serializer.load(path)["a"], torch.zeros(4))


def test_same_values_as_torch_load_mmap(tmp_path: Path) -> None:
    state = _state()
    serializer.save(state, tmp_path / "s.srlz")
    torch.save(state, tmp_path / "s.pt")
    ours = serializer.load(tmp_path / "s.srlz", mmap=True)
    theirs = torch.load(tmp_path / "s.pt", mmap=True, weights_only=True)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_map_location(tmp_path: Path) -> None:
    path = tmp_path / "s.srlz"
    serializer.save({"a": torch.arange(4.0)}, path)
    assert serializer.load(path, mmap=True, map_location="cpu")["a"].equal(torch.arange(4.0))
    seen = []

    def where(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        seen.append(location)
        return storage

    assert serializer.load(path, mmap=True, map_location=where)["a"].equal(torch.arange(4.0))
    assert seen == ["cpu"]


def test_what_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "s.srlz"
    serializer.save({"a": torch.arange(1000.0)}, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.srlz"
    cut.write_bytes(data[:-100])
    with pytest.raises(serializer.TruncatedError):
        serializer.load(cut, mmap=True)
    longer = tmp_path / "longer.srlz"
    longer.write_bytes(data + data)
    with pytest.raises(serializer.FormatError, match="follow the stream"):
        serializer.load(longer, mmap=True)
    header = tmp_path / "header.srlz"
    header.write_bytes(data[:60] + bytes([data[60] ^ 1]) + data[61:])
    with pytest.raises(serializer.SerializerError):
        serializer.load(header, mmap=True)
    # A record's checksum is not verified in this mode (it would read every page): what
    # the docs say, and what load without mmap catches.
    record = tmp_path / "record.srlz"
    at = len(data) - 32 - 8 - 2000
    record.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    serializer.load(record, mmap=True)
    with pytest.raises(serializer.ChecksumError):
        serializer.load(record)


def test_needs_a_local_path_and_this_format(tmp_path: Path) -> None:
    path = tmp_path / "s.srlz"
    serializer.save({"a": torch.ones(2)}, path)
    with open(path, "rb") as f, pytest.raises(ValueError, match="file path"):
        serializer.load(f, mmap=True)
    with pytest.raises(ValueError, match="file path"):
        serializer.load(io.BytesIO(path.read_bytes()), mmap=True)
    _serialization = pytest.importorskip("torch.distributed._serialization")
    torch_stream = tmp_path / "t.bin"
    with open(torch_stream, "wb") as f:
        _serialization._streaming_save({"a": torch.ones(2)}, f)
    with pytest.raises(serializer.UnsupportedError):
        serializer.load(torch_stream, mmap=True)
    assert os.path.exists(torch_stream)
