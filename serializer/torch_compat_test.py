"""Streams written by torch's own _streaming_save load through serializer.load."""

from __future__ import annotations

import io
import os
import pickle
import threading

import pytest
import torch

import serializer
from testing.cases import Case, MyClass, assert_same
from testing.transports import Trickle

_serialization = pytest.importorskip(
    "torch.distributed._serialization", reason="this torch has no _streaming_save (< 2.7)"
)


def _torch_stream(obj: object) -> bytes:
    buf = io.BytesIO()
    _serialization._streaming_save(obj, buf)
    return buf.getvalue()


def _zero_size_loads_in_torch() -> bool:
    try:
        _serialization._streaming_load(io.BytesIO(_torch_stream({"z": torch.zeros(0)})))
    except ValueError:
        return False
    return True


def test_reads_torch_streams_of_the_catalog(case: Case) -> None:
    obj = case.build("cpu")
    try:
        data = _torch_stream(obj)
    except Exception as e:  # torch refuses some dtypes on some versions
        pytest.skip(f"torch's _streaming_save cannot write this case: {e}")
    if "zero-size" in case.name or case.name == "torch-empty":
        if not _zero_size_loads_in_torch():
            pytest.skip("torch's own reader breaks on zero-size tensors before 2.10")
    buf = io.BytesIO(data + b"next")
    loaded = serializer.load(buf, weights_only=case.weights_only)
    assert_same(loaded, obj)
    assert buf.read() == b"next", "load must consume exactly the torch stream"


def test_torch_stream_over_a_raw_pipe_with_short_reads() -> None:
    obj = {"a": torch.arange(1000, dtype=torch.float32), "b": "x"}
    data = _torch_stream(obj)
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    writer.start()
    with open(r, "rb", buffering=0) as f:
        assert_same(serializer.load(Trickle(f)), obj)
    writer.join()


def test_truncated_torch_stream_is_a_truncation_error() -> None:
    data = _torch_stream({"a": torch.arange(100, dtype=torch.float32)})
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(serializer.TruncatedError):
            serializer.load(io.BytesIO(data[:cut]))


def test_torch_stream_weights_only_semantics() -> None:
    data = _torch_stream({"obj": MyClass(1)})
    with pytest.raises(pickle.UnpicklingError, match="not an allowed global"):
        serializer.load(io.BytesIO(data))
    assert serializer.load(io.BytesIO(data), weights_only=False) == {"obj": MyClass(1)}


def test_corrupted_torch_stream_is_the_libraries_error() -> None:
    # torch's format has no checksum: a flipped bit may load wrong data undetected (that is
    # one reason for ours), but under weights_only whatever torch's reader raises must come
    # out as our error. (With weights_only=False the stream's pickle runs as code and may
    # raise anything, as it does in torch.)
    obj = {"a": torch.arange(4, dtype=torch.float32), "s": "x", "n": [1, (2, 3)]}
    data = _torch_stream(obj)
    for offset in range(1, len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        try:
            serializer.load(io.BytesIO(bytes(flipped)))
        except serializer.SerializerError:
            pass


class _Quota(Exception):
    pass


class _Breaks:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (int, ("not a number",))


class _ResetAfter(io.RawIOBase):
    def __init__(self, data: bytes, n: int) -> None:
        self._data, self._n = io.BytesIO(data), n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        if self._data.tell() >= self._n:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self._data.readinto(memoryview(b)[: self._n - self._data.tell()])


def test_what_is_not_the_torch_streams_fault_passes_through_as_in_torch() -> None:
    """The file's errors, map_location's and (weights_only=False) the object's own code's
    errors are the caller's: they pass through as torch's own reader passes them."""
    data = _torch_stream({"a": torch.ones(2)})
    with pytest.raises(ConnectionResetError):
        serializer.load(_ResetAfter(data, 40))

    def quota(storage, location):  # type: ignore[no-untyped-def]
        raise _Quota("over quota")

    with pytest.raises(_Quota):
        serializer.load(io.BytesIO(data), map_location=quota)
    for bad in ("bogus", {"cpu": "bogus"}):
        with pytest.raises(RuntimeError) as info:
            serializer.load(io.BytesIO(data), map_location=bad)
        assert not isinstance(info.value, serializer.SerializerError)
    with pytest.raises(ValueError, match="not a number") as err:
        serializer.load(io.BytesIO(_torch_stream({"x": _Breaks()})), weights_only=False)
    assert not isinstance(err.value, serializer.SerializerError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_torch_stream_mapped_to_a_missing_device_is_a_device_error() -> None:
    data = _torch_stream({"a": torch.ones(2)})
    with pytest.raises(serializer.DeviceError, match="CUDA") as info:
        serializer.load(io.BytesIO(data), map_location="cuda")
    assert isinstance(info.value, RuntimeError)  # what torch's own reader raises
