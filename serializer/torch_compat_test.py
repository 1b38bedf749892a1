"""Streams written by torch's own _streaming_save load through serializer.load."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import socket
import threading
import warnings
from typing import Any

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
    except Exception as e:
        # Only a dtype may be one this torch's own save refuses (none is, 2.7 to 2.15:
        # docs/VERSIONS.md); that any other case cannot be written is a failure, not a skip.
        if "dtype" not in case.tags:
            raise
        pytest.skip(f"torch's _streaming_save cannot write this dtype: {e}")
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
    for cut in range(1, len(data)):  # in the entry list, in data.pkl, in the storage's bytes
        with pytest.raises(serializer.TruncatedError):
            serializer.load(io.BytesIO(data[:cut]))
    assert serializer.load(io.BytesIO(data))["a"].equal(torch.arange(100, dtype=torch.float32))


def test_torch_stream_weights_only_semantics() -> None:
    data = _torch_stream({"obj": MyClass(1)})
    with pytest.raises(pickle.UnpicklingError, match="not an allowed global"):
        serializer.load(io.BytesIO(data))
    assert serializer.load(io.BytesIO(data), weights_only=False) == {"obj": MyClass(1)}


def test_corrupted_torch_stream_is_the_libraries_error() -> None:
    # torch's format has no checksum, so a flipped byte may load (that is one reason for ours):
    # "raises or loads" alone cannot fail. What the test means is pinned down per region of
    # the stream instead, each bit flip's outcome counted:
    # - nothing but the library's errors ever comes out of torch's reader (weights_only=True;
    #   with weights_only=False the stream's pickle runs as code and may raise anything);
    # - a flip in a storage's bytes loads, and exactly that byte differs (no checksum to
    #   catch it), so the loop really reaches the data;
    # - a flip in the byteorder record, or in the key of data.pkl or of a storage in the
    #   entry list, must be a FormatError (torch refuses it, or the record is missing);
    # - elsewhere (the pickles of the entry list and of the object) a flip may load (memo
    #   indices are free, a value may change) or fail; every kind of error the translation
    #   makes (format, truncation, unsafe global) must be met there, so that path is tested.
    obj = {"a": torch.arange(4, dtype=torch.float32), "s": "x", "n": [1, (2, 3)]}
    data = _torch_stream(obj)
    f = io.BytesIO(data)
    entries = _serialization._weights_only_unpickler.load(f)  # as torch's reader does
    records, pos = {}, f.tell()
    for entry in entries:
        records[entry.key] = (pos, pos + entry.length)
        pos += entry.length
    assert pos == len(data)
    (storage_key,) = [e.key for e in entries if e.is_storage]
    storage_start, storage_end = records[storage_key]
    must_fail = set(range(*records["byteorder"]))
    for key in ("data.pkl", storage_key):
        at = data.index(key.encode(), 0, records["data.pkl"][0])
        must_fail.update(range(at, at + len(key)))
    outcomes: dict[str, int] = {}
    for offset in range(1, len(data)):  # byte 0 is not torch's: flipped, it is no pickle
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        try:
            loaded = serializer.load(io.BytesIO(bytes(flipped)))
        except serializer.SerializerError as e:
            assert storage_start > offset or offset >= storage_end, f"{offset}: {e!r}"
            if offset in must_fail:
                assert isinstance(e, serializer.FormatError), f"{offset}: {e!r}"
            outcome = type(e).__name__
        except Exception as e:
            raise AssertionError(f"flip at {offset}: {e!r} is not the library's error") from e
        else:
            assert offset not in must_fail, f"flip at {offset} loaded: {loaded!r}"
            if storage_start <= offset < storage_end:
                expected = {**obj, "a": obj["a"].clone()}
                expected["a"].view(torch.uint8)[offset - storage_start] ^= 0x10
                assert_same(loaded, expected)
            outcome = "loaded"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    kinds = {"loaded", "FormatError", "TruncatedError", "UnsafeGlobalError"}
    assert set(outcomes) == kinds, outcomes
    assert outcomes["loaded"] >= storage_end - storage_start


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
        with pytest.raises(RuntimeError, match="device string: bogus") as info:  # torch's
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


class _CountingSocket(socket.socket):
    """A real socket that counts the calls that take bytes from it."""

    calls = 0

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        type(self).calls += 1
        return super().recv_into(*args, **kwargs)

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        type(self).calls += 1
        return super().recv(*args, **kwargs)


class _CountingRaw(io.RawIOBase):
    """A pipe's raw descriptor, counting reads (no peek, not seekable)."""

    def __init__(self, fd: int) -> None:
        self._f = open(fd, "rb", buffering=0)  # noqa: SIM115 - closed with this object
        self.calls = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        self.calls += 1
        return self._f.readinto(b)

    def close(self) -> None:
        self._f.close()
        super().close()


def _many_tensors() -> dict[str, torch.Tensor]:
    return {f"layer.{i}.weight": torch.full((3,), float(i)) for i in range(2000)}


def _send(data: bytes, sock: socket.socket) -> threading.Thread:
    def run() -> None:
        sock.sendall(data)
        sock.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_torch_stream_header_is_not_read_a_byte_per_call_from_a_socket() -> None:
    # The pickle listing the records has no length before it: it used to be read one byte
    # per call (one system call per byte on a socket: 0.7 MB/s). It is looked at with
    # MSG_PEEK and taken exactly to its end, so that a second stream behind it stays whole.
    obj = _many_tensors()
    data = _torch_stream(obj)
    a, b = socket.socketpair()
    sock = _CountingSocket(fileno=b.detach())
    sender = _send(data + data, a)
    with sock:
        streams = list(serializer.iter_load(sock))
    sender.join()
    assert len(streams) == 2
    for loaded in streams:
        assert_same(loaded, obj)
    assert _CountingSocket.calls < 1000, f"{_CountingSocket.calls} reads for {len(data)} bytes"


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered-pipe", "raw-pipe"])
def test_torch_stream_header_from_a_pipe_in_few_reads(buffered: bool) -> None:
    # Through a BufferedReader (its peek), or a raw pipe (no look-ahead: an opcode per read,
    # never past the stream's end; it was a byte per read).
    obj = _many_tensors()
    data = _torch_stream(obj)
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data + data), os.close(w)))
    writer.start()
    raw = _CountingRaw(r)
    with io.BufferedReader(raw) if buffered else raw as f:
        streams = list(serializer.iter_load(f))
    writer.join()
    assert len(streams) == 2
    for loaded in streams:
        assert_same(loaded, obj)
    header = next(pos for op, _, pos in pickletools.genops(data) if op.name == "STOP") + 1
    most = 1000 if buffered else header  # two streams
    assert raw.calls < most, f"{raw.calls} reads for a header of about {header} bytes"


def test_torch_stream_loads_without_copying_its_records() -> None:
    # Records are read into writable buffers that become the storages themselves (torch's
    # own reader copies each one, and warns about read-only bytes).
    data = _torch_stream({"a": torch.arange(1 << 16, dtype=torch.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = serializer.load(io.BytesIO(data))
    assert loaded["a"].equal(torch.arange(1 << 16, dtype=torch.float32))
    loaded["a"][0] = 5  # writable
