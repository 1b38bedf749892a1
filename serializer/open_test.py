"""serializer.open: random access to one stream, as safetensors' safe_open: keys, index,
get_tensor (one record read and verified), get_slice (only the rows' bytes)."""

from __future__ import annotations

import contextlib
import io
import pathlib
from typing import Any

import pytest
import torch

import serializer
from testing.transports import CountingFile


def _state() -> dict[str, Any]:
    base = torch.arange(24.0).reshape(4, 6)
    return {
        "big": torch.zeros(1 << 20),  # 4 MiB, never read below
        "w": torch.arange(60, dtype=torch.bfloat16).reshape(10, 6),
        "i": torch.arange(5, dtype=torch.int64),
        "base": base,
        "col": base[:, 1],  # a view of base's storage
        "nested": {"p": torch.nn.Parameter(torch.ones(3))},
        "step": 7,
    }


def _stream(obj: Any) -> bytes:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    return buf.getvalue()


def test_keys_index_and_tensors(tmp_path: pathlib.Path) -> None:
    state = _state()
    path = tmp_path / "m.srlz"
    serializer.save(state, path)
    with serializer.open(path) as f:
        assert f.keys() == ["big", "w", "i", "base", "col", "nested.p"]
        assert f.index.keys() == serializer.read_index(path).keys()
        assert f.index.nbytes == path.stat().st_size
        for key in ("w", "i", "base", "col"):
            got = f.get_tensor(key)
            assert got.dtype == state[key].dtype and torch.equal(got, state[key])
        p = f.get_tensor("nested.p")
        assert type(p) is torch.nn.Parameter and p.requires_grad


def test_get_tensor_reads_only_its_record() -> None:
    data = _stream(_state())
    source = CountingFile(data)
    with serializer.open(source) as f:
        header = source.read_bytes
        assert torch.equal(f.get_tensor("i"), torch.arange(5))
        assert source.read_bytes - header == 5 * 8 + 8  # the record and its checksum
    assert header < 4096


def test_get_slice_reads_only_the_rows() -> None:
    state = _state()
    source = CountingFile(_stream(state))
    with serializer.open(source) as f:
        before = source.read_bytes
        rows = f.get_slice("w")[2:5]
        assert source.read_bytes - before == 3 * 6 * 2  # three bf16 rows of 6
        assert torch.equal(rows, state["w"][2:5])
        assert f.get_slice("w").shape == (10, 6)
        assert torch.equal(f.get_slice("w")[8:100], state["w"][8:])
        assert torch.equal(f.get_slice("col")[1:3], state["col"][1:3])  # a view: whole storage


def test_a_corrupted_record_fails_get_tensor_only_for_its_tensors() -> None:
    state = {"a": torch.arange(4.0), "b": torch.arange(4.0) + 10}
    data = bytearray(_stream(state))
    index = serializer.read_index(io.BytesIO(bytes(data)))
    end = index.nbytes - 32 - 8  # the last payload byte of the last storage ("b")
    data[end - 1] ^= 0x01
    with serializer.open(io.BytesIO(bytes(data))) as f:
        assert torch.equal(f.get_tensor("a"), state["a"])
        with pytest.raises(serializer.ChecksumError):
            f.get_tensor("b")


def test_map_location_and_errors() -> None:
    data = _stream(_state())
    with serializer.open(io.BytesIO(data), map_location="cpu") as f:
        assert f.get_tensor("i").device.type == "cpu"
        with pytest.raises(serializer.MismatchError, match="no tensor 'nope'"):
            f.get_tensor("nope")
    with pytest.raises(serializer.DeviceError):
        with serializer.open(io.BytesIO(data), map_location="cuda:7") as f:
            f.get_tensor("i")

    class NoSeek(io.RawIOBase):
        def readable(self) -> bool:
            return True

    with pytest.raises(serializer.UnsupportedError, match="seekable"):
        serializer.open(NoSeek())


def test_same_tensors_as_safetensors_safe_open(tmp_path: pathlib.Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    tensors = {"w": torch.arange(60, dtype=torch.bfloat16).reshape(10, 6), "i": torch.arange(5)}
    st.save_file(tensors, str(tmp_path / "m.safetensors"))
    serializer.save(tensors, tmp_path / "m.srlz")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as theirs:
        with serializer.open(tmp_path / "m.srlz") as ours:
            assert sorted(ours.keys()) == sorted(theirs.keys())
            for key in theirs.keys():
                assert torch.equal(ours.get_tensor(key), theirs.get_tensor(key))
            assert torch.equal(ours.get_slice("w")[1:4], theirs.get_slice("w")[1:4])


@pytest.mark.parametrize("how", ["path", "file object at an offset"])
def test_local_files_are_mapped_and_still_verified(tmp_path: pathlib.Path, how: str) -> None:
    # In a local file, get_tensor views the file's pages (copy-on-write) instead of copying
    # the record, and verifies them: the same tensors, the same checksum errors.
    state = {"a": torch.arange(4.0), "b": torch.arange(4.0) + 10, "e": torch.empty(0)}
    data = bytearray(_stream(state))
    index = serializer.read_index(io.BytesIO(bytes(data)))
    end = index.nbytes - 32 - 8
    data[end - 1] ^= 0x01  # the last payload byte of "b"
    path = tmp_path / "m.srlz"
    prefix = b"x" * 13 if how != "path" else b""
    path.write_bytes(prefix + bytes(data))
    with contextlib.ExitStack() as stack:
        if how == "path":
            src: Any = path
        else:
            src = stack.enter_context(open(path, "rb"))
            src.seek(len(prefix))
        with serializer.open(src) as f:
            a = f.get_tensor("a")
            assert torch.equal(a, state["a"]) and f.get_tensor("e").numel() == 0
            with pytest.raises(serializer.ChecksumError):
                f.get_tensor("b")
    a += 1  # writable, and the file does not change
    assert path.read_bytes() == prefix + bytes(data)
