"""The wire layout: what `_format` packs matches the independent writer of docs/FORMAT.md
(`testing.forge`) and unpacks to what was packed; every validation error, with its message."""

from __future__ import annotations

import struct
import sys

import pytest
import torch
import xxhash

from serializer import _format
from serializer._errors import ChecksumError, FormatError, VersionError
from serializer._format import StorageEntry, TensorRef
from testing import forge

F32 = forge.dtype_id("float32")

# ------------------------------------------------------------------------------ round trips


def test_preamble_round_trip() -> None:
    data = _format.pack_preamble(3, 5, 5 * 20 + 16 * 7, 1234)
    assert len(data) == _format.PREAMBLE_SIZE == 48
    assert data == forge.preamble(3, 5, 5 * 20 + 16 * 7, 1234, flags=forge.NATIVE_FLAGS)
    pre = _format.unpack_preamble(data)
    assert pre == _format.Preamble(
        _format.MAJOR, _format.MINOR, forge.NATIVE_FLAGS, 3, 5, 5 * 20 + 16 * 7, 1234
    )
    assert pre.big_endian == (sys.byteorder == "big")


def test_storage_table_round_trip() -> None:
    entries = [(16, F32, 0, -1), (0, forge.dtype_id("uint8"), 0, -1), (6, 8, 1, 3)]
    data = _format.pack_storage_table(entries)
    assert data == b"".join(forge.storage_entry(*e) for e in entries)
    table = _format.unpack_storage_table(data)
    assert table == [
        StorageEntry(16, F32, "cpu", -1),
        StorageEntry(0, 2, "cpu", -1),
        StorageEntry(6, 8, "cuda", 3),
    ]
    assert [e.location for e in table] == ["cpu", "cpu", "cuda:3"]
    assert _format.unpack_storage_table(b"") == []


TABLE = [StorageEntry(16, F32, "cpu", -1), StorageEntry(48, forge.dtype_id("int64"), "cpu", -1)]


def test_tensor_table_round_trip() -> None:
    refs = [
        TensorRef(_format.TENSOR, 0, F32, (4,), (1,), 0, False),
        TensorRef(_format.PARAMETER, 1, forge.dtype_id("int64"), (2, 3), (3, 1), 0, True),
        TensorRef(_format.TENSOR, 1, forge.dtype_id("float64"), (), (), 5, False),  # 0-d
        TensorRef(_format.TENSOR, 0, forge.dtype_id("int32"), (2, 2), (1, 2), 0, False),
        TensorRef(_format.PARAMETER, 0, F32, (0, 3), (3, 1), 100, False),  # no elements
        TensorRef(_format.TENSOR, 1, forge.dtype_id("int64"), (1, 1, 2), (6, 6, 2), 3, True),
    ]
    packed = [_format.pack_tensor(*r) for r in refs]
    for r, p in zip(refs, packed, strict=True):
        assert p == forge.tensor_entry(
            r.storage, r.dtype_id, r.kind, int(r.requires_grad), r.offset, r.shape, r.stride
        )
    assert _format.unpack_tensor_table(b"".join(packed), len(refs), TABLE) == refs
    assert _format.unpack_tensor_table(b"", 0, []) == []


def test_trailer_round_trip() -> None:
    data = _format.pack_trailer(3, 4567)
    assert len(data) == _format.TRAILER_SIZE == 32
    assert data == forge.trailer(3, 4567)
    assert _format.check_trailer(data, 3, 4567) is None


def test_checksums() -> None:
    parts = [b"storage table", b"", b"skeleton"]
    assert _format.checksum(b"abc") == xxhash.xxh3_64_intdigest(b"abc")
    assert _format.header_checksum(*parts) == xxhash.xxh3_64_intdigest(b"".join(parts))
    state = _format.checksum_state()
    for p in parts:
        state.update(p)
    assert state.intdigest() == _format.header_checksum(*parts)
    packed = _format.pack_checksum(0x0102030405060708)
    assert packed == bytes(range(8, 0, -1))  # little-endian u64
    assert _format.unpack_checksum(packed) == 0x0102030405060708
    assert _format.unpack_checksum_from(b"xx" + packed, 2) == 0x0102030405060708
    assert _format.checksum(b"") == forge.EMPTY_CHECKSUM


def test_data_length_and_swap_unit() -> None:
    assert _format.data_length([]) == 32
    assert _format.data_length(TABLE) == 16 + 48 + 2 * 8 + 32
    names = {"uint8": 1, "float32": 4, "bfloat16": 2, "complex64": 4, "complex128": 8}
    for name, unit in names.items():
        assert _format.swap_unit(forge.dtype_id(name)) == unit, name


def test_every_dtype_id_resolves_against_this_torch() -> None:
    for dtype_id, (name, size) in _format.DTYPE_TABLE.items():
        dtype = getattr(torch, name, None)
        if dtype is None:
            assert dtype_id not in _format.DTYPE_BY_ID
            continue
        assert _format.dtype_from_id(dtype_id, "x") is dtype
        assert _format.ID_BY_DTYPE[dtype] == dtype_id
        assert torch.empty((), dtype=dtype).element_size() == size


def test_dtype_from_id_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FormatError, match="^tensor 'w' has unknown dtype id 99$"):
        _format.dtype_from_id(99, "tensor 'w'")
    monkeypatch.delitem(_format.DTYPE_BY_ID, F32)  # as on a torch that lacks the dtype
    with pytest.raises(FormatError, match="tensor 'w' has dtype float32, which torch .* not have"):
        _format.dtype_from_id(F32, "tensor 'w'")


# ------------------------------------------------------------------------- preamble errors


def _preamble(**fields: int) -> bytes:
    values = {"storage_count": 0, "tensor_count": 0, "tensor_table_len": 0, "skeleton_len": 0}
    values.update(fields)
    return forge.preamble(**values)


PREAMBLE_ERRORS: dict[str, tuple[bytes, type[Exception], str]] = {
    "magic": (
        b"\x80" + _preamble()[1:],
        FormatError,
        r"not a serializer stream: expected magic b'\\x89SRLZ\\r\\n\\x1a', found b'\\x80SRLZ",
    ),
    "major": (
        _preamble(major=2, minor=3),
        VersionError,
        r"stream has format version 2\.3; this reader understands 1\.x \(up to 1\.0\)",
    ),
    "flags": (_preamble(flags=6), FormatError, "preamble has unknown flags 0x00000006"),
    "storages": (
        _preamble(storage_count=(1 << 24) + 1),
        FormatError,
        "storage count 16777217 exceeds the limit 16777216",
    ),
    "tensors": (
        _preamble(tensor_count=(1 << 24) + 1, tensor_table_len=((1 << 24) + 1) * 20),
        FormatError,
        "tensor count 16777217 exceeds the limit 16777216",
    ),
    "table-too-short": (
        _preamble(tensor_count=2, tensor_table_len=39),
        FormatError,
        "tensor table length 39 is impossible for 2 tensors",
    ),
    "table-too-long": (
        _preamble(tensor_count=2, tensor_table_len=2 * (20 + 16 * 64) + 1),
        FormatError,
        "tensor table length 2089 is impossible for 2 tensors",
    ),
    "table-without-tensors": (
        _preamble(tensor_count=0, tensor_table_len=1),
        FormatError,
        "tensor table length 1 is impossible for 0 tensors",
    ),
    "skeleton": (
        _preamble(skeleton_len=(1 << 31) + 1),
        FormatError,
        "skeleton length 2147483649 exceeds the limit 2147483648",
    ),
}


@pytest.mark.parametrize("name", list(PREAMBLE_ERRORS))
def test_preamble_errors(name: str) -> None:
    data, error, message = PREAMBLE_ERRORS[name]
    with pytest.raises(error, match=message) as info:
        _format.unpack_preamble(data)
    assert type(info.value) is error


def test_preamble_limits_are_inclusive() -> None:
    most = 1 << 24
    pre = _format.unpack_preamble(
        _preamble(
            storage_count=most,
            tensor_count=2,
            tensor_table_len=2 * (20 + 16 * 64),
            skeleton_len=1 << 31,
        )
    )
    assert (pre.storage_count, pre.tensor_table_len, pre.skeleton_len) == (most, 2088, 1 << 31)


def test_newer_minor_version_unpacks() -> None:
    assert _format.unpack_preamble(_preamble(minor=9)).minor == 9


def test_preamble_checksum_error() -> None:
    data = bytearray(_preamble(storage_count=1))
    data[20] ^= 0x01  # the storage count: covered by the checksum
    with pytest.raises(ChecksumError, match="checksum mismatch in preamble") as info:
        _format.unpack_preamble(bytes(data))
    assert info.value.what == "preamble" and info.value.storage is None
    assert info.value.expected == struct.unpack("<Q", data[40:])[0]
    assert info.value.found == xxhash.xxh3_64_intdigest(bytes(data[:40]))


def test_preamble_checksum_is_checked_before_the_version() -> None:
    data = bytearray(_preamble(major=2))
    data[44] ^= 0x01  # the stored checksum itself
    with pytest.raises(ChecksumError):
        _format.unpack_preamble(bytes(data))


# -------------------------------------------------------------------- storage table errors

STORAGE_ERRORS: dict[str, tuple[bytes, str]] = {
    "device": (forge.storage_entry(4, F32, device_type_id=5), "has unknown device type id 5"),
    "dtype": (forge.storage_entry(4, 99), "has unknown dtype id 99"),
    "dtype-zero": (forge.storage_entry(4, 0), "has unknown dtype id 0"),
    "reserved": (forge.storage_entry(4, F32, reserved=1), "has a malformed table entry"),
    "device-index": (forge.storage_entry(4, F32, device_index=-2), "has a malformed table entry"),
    "partial-element": (
        forge.storage_entry(6, F32),
        "holds 6 bytes, not a whole number of float32 elements",
    ),
}


def test_storage_table_total_is_limited() -> None:
    half = 1 << 61
    data = forge.storage_entry(half, F32) + forge.storage_entry(half - 4, F32)
    assert [e.nbytes for e in _format.unpack_storage_table(data)] == [half, half - 4]
    data = forge.storage_entry(half, F32) + forge.storage_entry(half, F32)
    with pytest.raises(FormatError, match=r"claim 4611686018427387904 bytes in all .*2\^62"):
        _format.unpack_storage_table(data)


@pytest.mark.parametrize("name", list(STORAGE_ERRORS))
def test_storage_table_errors(name: str) -> None:
    entry, message = STORAGE_ERRORS[name]
    data = forge.storage_entry(8, F32) + entry  # the bad entry is storage 1
    with pytest.raises(FormatError, match=f"^storage 1 {message}$"):
        _format.unpack_storage_table(data)


# --------------------------------------------------------------------- tensor table errors

ONE_STORAGE = [StorageEntry(16, F32, "cpu", -1)]  # four float32 elements
_GOOD = forge.tensor_entry(0, F32, shape=(4,), stride=(1,))

TENSOR_ERRORS: dict[str, tuple[bytes, int, str]] = {
    "ends-in-head": (_GOOD[:10], 1, "tensor table ends inside tensor 0"),
    "ends-in-second": (_GOOD + _GOOD[:19], 2, "tensor table ends inside tensor 1"),
    "ends-in-dims": (_GOOD[:-1], 1, "tensor table ends inside tensor 0"),
    "ndim": (
        forge.tensor_entry(0, F32, shape=(), stride=(), ndim=65),
        1,
        r"tensor 0 has 65 dimensions \(at most 64\)",
    ),
    "kind": (forge.tensor_entry(0, F32, kind=2), 1, "tensor 0 has unknown kind 2 or flags 0"),
    "flags": (forge.tensor_entry(0, F32, flags=2), 1, "tensor 0 has unknown kind 0 or flags 2"),
    "storage": (forge.tensor_entry(1, F32), 1, "tensor 0 names storage 1 of 1"),
    "dtype": (forge.tensor_entry(0, 99), 1, "tensor 0 has unknown dtype id 99"),
    "element-size": (
        forge.tensor_entry(0, forge.dtype_id("int64")),
        1,
        "tensor 0 of dtype int64 views storage 0 of dtype float32",
    ),
    "past-the-end": (
        forge.tensor_entry(0, F32, shape=(5,), stride=(1,)),
        1,
        r"tensor 0 of shape \[5\], stride \[1\], offset 0 reaches past the 16 bytes of storage 0",
    ),
    "offset-past-the-end": (
        forge.tensor_entry(0, F32, offset=1, shape=(4,), stride=(1,)),
        1,
        r"tensor 0 of shape \[4\], stride \[1\], offset 1 reaches past",
    ),
    "2d-past-the-end": (
        forge.tensor_entry(0, F32, offset=1, shape=(2, 2), stride=(2, 1)),
        1,
        r"tensor 0 of shape \[2, 2\], stride \[2, 1\], offset 1 reaches past",
    ),
    "0d-past-the-end": (
        forge.tensor_entry(0, F32, offset=4, shape=(), stride=()),
        1,
        r"tensor 0 of shape \[\], stride \[\], offset 4 reaches past",
    ),
    "second-entry": (
        _GOOD + forge.tensor_entry(0, F32, shape=(2,), stride=(4,)),
        2,
        r"tensor 1 of shape \[2\], stride \[4\], offset 0 reaches past",
    ),
    "trailing-bytes": (_GOOD + b"\0\0\0", 1, "tensor table has 3 bytes after its last entry"),
    "more-entries-than-counted": (
        _GOOD + _GOOD,
        1,
        f"tensor table has {len(_GOOD)} bytes after its last entry",
    ),
}


@pytest.mark.parametrize("name", list(TENSOR_ERRORS))
def test_tensor_table_errors(name: str) -> None:
    data, count, message = TENSOR_ERRORS[name]
    with pytest.raises(FormatError, match=message):
        _format.unpack_tensor_table(data, count, ONE_STORAGE)


def test_tensor_entries_at_the_edge_of_their_storage_are_valid() -> None:
    entries = [
        forge.tensor_entry(0, F32, offset=3, shape=(), stride=()),  # the last element
        forge.tensor_entry(0, F32, offset=1, shape=(3,), stride=(1,)),
        forge.tensor_entry(0, F32, shape=(2, 2), stride=(1, 2)),  # transposed
        forge.tensor_entry(0, F32, offset=99, shape=(0, 5), stride=(5, 1)),  # no elements
        forge.tensor_entry(0, forge.dtype_id("int32"), shape=(4,), stride=(1,)),  # same size
        forge.tensor_entry(0, F32, shape=(4,), stride=(0,)),  # broadcast
    ]
    refs = _format.unpack_tensor_table(b"".join(entries), len(entries), ONE_STORAGE)
    assert [r.offset for r in refs] == [3, 1, 0, 99, 0, 0]


# ------------------------------------------------------------------------- trailer errors


def test_trailer_errors() -> None:
    good = forge.trailer(2, 100)
    with pytest.raises(FormatError, match=r"expected end marker b'\\x1aSRLZEND', found b'x"):
        _format.check_trailer(b"x" + good[1:], 2, 100)
    bad = bytearray(good)
    bad[9] ^= 0x01
    with pytest.raises(ChecksumError, match="checksum mismatch in end marker") as info:
        _format.check_trailer(bytes(bad), 2, 100)
    assert info.value.what == "end marker"
    message = (
        "end marker says 2 storages and 100 bytes, but the stream held {} storages and {} bytes"
    )
    with pytest.raises(FormatError, match=message.format(3, 100)):
        _format.check_trailer(good, 3, 100)
    with pytest.raises(FormatError, match=message.format(2, 101)):
        _format.check_trailer(good, 2, 101)
