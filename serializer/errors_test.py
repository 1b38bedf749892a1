"""The exception hierarchy: structured attributes, the messages built from them, and the
record errors of a load located by storage, size and keys."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import serializer
from serializer import _errors, _format
from testing.cases import make_tensor


def test_truncated_error_attributes_and_message() -> None:
    error = serializer.TruncatedError("storage 1", 10, 4, storage=1)
    assert (error.what, error.storage, error.expected, error.received) == ("storage 1", 1, 10, 4)
    assert error.nbytes is None and error.keys == ()
    assert str(error) == "stream truncated in storage 1: expected 10 bytes, received 4"
    assert isinstance(error, EOFError) and isinstance(error, serializer.FormatError)


def test_checksum_error_attributes_and_message() -> None:
    error = serializer.ChecksumError("header", 0xABCD, 0x1234)
    assert (error.what, error.storage, error.expected, error.found) == (
        "header",
        None,
        0xABCD,
        0x1234,
    )
    assert str(error) == (
        "checksum mismatch in header: stored xxh3-64 000000000000abcd, "
        "computed 0000000000001234 (the stream is corrupted)"
    )


def test_located_truncated_error_names_size_and_keys() -> None:
    error = serializer.TruncatedError("storage 1", 10, 0, storage=1)
    located = error.located(10, ["b"])
    assert type(located) is serializer.TruncatedError
    assert (located.what, located.storage, located.nbytes, located.keys) == (
        "storage 1",
        1,
        10,
        ("b",),
    )
    assert (located.expected, located.received) == (10, 0)
    assert str(located) == (
        "stream truncated in storage 1 (10 bytes, used by 'b'): expected 10 bytes, received 0"
    )


def test_located_checksum_error_names_size_and_keys() -> None:
    error = serializer.ChecksumError("storage 2", 1, 2, storage=2)
    located = error.located(16, ["x", "x_view"])
    assert type(located) is serializer.ChecksumError
    assert (located.storage, located.nbytes, located.keys) == (2, 16, ("x", "x_view"))
    assert (located.expected, located.found) == (1, 2)
    assert "checksum mismatch in storage 2 (16 bytes, used by 'x', 'x_view'): " in str(located)


@pytest.mark.parametrize(
    "keys,used",
    [
        ([], " (8 bytes)"),
        (["a"], " (8 bytes, used by 'a')"),
        (["a", "b", "c"], " (8 bytes, used by 'a', 'b', 'c')"),
        (["a", "b", "c", "d"], " (8 bytes, used by 'a', 'b', 'c' ...)"),
        ([f"k{i}" for i in range(100)], " (8 bytes, used by 'k0', 'k1', 'k2' ...)"),
    ],
    ids=["no-keys", "one", "three", "four", "hundred"],
)
def test_keys_shown_are_at_most_three(keys: list[str], used: str) -> None:
    for error in (
        serializer.TruncatedError("storage 0", 8, 1, storage=0),
        serializer.ChecksumError("storage 0", 1, 2, storage=0),
    ):
        located = error.located(8, keys)
        assert f"storage 0{used}:" in str(located)
        assert located.keys == tuple(keys)  # all kept, whatever the message shows


def test_a_part_without_a_storage_is_named_alone() -> None:
    error = serializer.TruncatedError("preamble", 48, 3, nbytes=100, keys=["a"])
    assert str(error).startswith("stream truncated in preamble: ")


def test_hierarchy() -> None:
    assert set(_errors.__all__) <= set(serializer.__all__)
    for name in _errors.__all__:
        assert issubclass(getattr(serializer, name), serializer.SerializerError)
    assert issubclass(serializer.VersionError, serializer.FormatError)
    assert issubclass(serializer.FormatError, ValueError)
    assert issubclass(serializer.TruncatedError, EOFError)
    assert issubclass(serializer.ChecksumError, serializer.FormatError)
    assert issubclass(serializer.UnsupportedError, TypeError)
    assert issubclass(serializer.UnsafeGlobalError, pickle.UnpicklingError)
    assert issubclass(serializer.MismatchError, ValueError)
    assert issubclass(serializer.DeviceError, RuntimeError)


# ------------------------------------------------------------------ errors of a real load


def _stream() -> bytes:
    """A stream of three storages: 'a' (24 bytes), 'b' and its view 'b_row' (16), 'c' (5)."""
    b = make_tensor((4,), torch.float32, seed=2)
    obj = {
        "a": make_tensor((3,), torch.int64, seed=1),
        "b": b,
        "b_row": b[1:],
        "c": make_tensor((5,), torch.uint8, seed=3),
    }
    buf = io.BytesIO()
    serializer.save(obj, buf)
    return buf.getvalue()


def _record_offset(data: bytes, storage: int) -> int:
    """Where `storage`'s record starts in the stream `data`."""
    index = serializer.read_index(io.BytesIO(data))
    offset = len(data) - _format.data_length(index.storages)  # the first record
    for entry in index.storages[:storage]:
        offset += entry.nbytes + _format.CHECKSUM_SIZE
    return offset


def _corrupted(storage: int) -> bytes:
    """The stream of `_stream` with one byte of `storage`'s record flipped."""
    data = bytearray(_stream())
    data[_record_offset(bytes(data), storage) + 1] ^= 0x01
    return bytes(data)


LOADERS = {
    "load": lambda f: serializer.load(f),
    # load_keys seeks past the records it does not need on a seekable source (load_test.py)
    "load_keys": lambda f: serializer.load_keys(io.BufferedReader(_NoSeek(f)), ["a"]),
    "load_into": lambda f: serializer.load_into(
        {
            "a": torch.zeros(3, dtype=torch.int64),
            "b": torch.zeros(4),
            "b_row": torch.zeros(3),
            "c": torch.zeros(5, dtype=torch.uint8),
        },
        f,
    ),
    "read_index": lambda f: serializer.read_index(io.BufferedReader(_NoSeek(f))),
}
KEYS = {0: ("a",), 1: ("b", "b_row"), 2: ("c",)}
NBYTES = {0: 24, 1: 16, 2: 5}


@pytest.mark.parametrize("storage", [0, 1, 2])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_corrupted_record_is_located_by_storage_and_keys(storage: int, loader: str) -> None:
    data = _corrupted(storage)
    with pytest.raises(serializer.ChecksumError) as info:
        LOADERS[loader](io.BytesIO(data))
    error = info.value
    assert error.storage == storage
    assert error.keys == KEYS[storage]
    assert error.nbytes == NBYTES[storage]
    assert error.expected != error.found
    shown = ", ".join(repr(k) for k in KEYS[storage])
    assert f"storage {storage} ({NBYTES[storage]} bytes, used by {shown})" in str(error)


def test_truncated_record_of_a_load_is_located() -> None:
    data = _stream()
    cut = _record_offset(data, 1) + 6
    with pytest.raises(serializer.TruncatedError) as info:
        serializer.load(io.BytesIO(data[:cut]))
    error = info.value
    assert (error.storage, error.keys, error.nbytes) == (1, ("b", "b_row"), 16)
    assert (error.expected, error.received) == (16, 6)
    assert "storage 1 (16 bytes, used by 'b', 'b_row'): expected 16 bytes, received 6" in str(error)


class _NoSeek(io.RawIOBase):
    """A raw stream over `f` that cannot seek: `read_index` must read the records through."""

    def __init__(self, f: io.BytesIO) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._f.readinto(b)
