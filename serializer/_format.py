"""The wire layout, and the only module that packs or unpacks bytes of it.

docs/FORMAT.md is the specification; every constant here is named there.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch
import xxhash

from ._errors import ChecksumError, FormatError, VersionError

MAGIC = b"\x89SRLZ\r\n\x1a"
END_MAGIC = b"\x1aSRLZEND"
MAJOR = 1
MINOR = 0

FLAG_BIG_ENDIAN = 1
KNOWN_FLAGS = FLAG_BIG_ENDIAN

# magic, major, minor, flags, storage count, tensor count, tensor table length,
# skeleton length, xxh3 of the first 40 bytes
_PREAMBLE = struct.Struct("<8sHHIIIQQQ")
PREAMBLE_SIZE = _PREAMBLE.size  # 48
_PREAMBLE_SUMMED = PREAMBLE_SIZE - 8
# nbytes, dtype id, device type id, reserved, device index (-1: none)
_STORAGE = struct.Struct("<QHBBi")
STORAGE_ENTRY_SIZE = _STORAGE.size  # 16
# end magic, storage count, bytes before the trailer, xxh3 of the first 24 bytes
_TRAILER = struct.Struct("<8sQQQ")
TRAILER_SIZE = _TRAILER.size  # 32
_U64 = struct.Struct("<Q")
CHECKSUM_SIZE = 8

# storage, dtype id, kind, flags, storage offset, ndim; then ndim sizes and ndim strides (u64)
_TENSOR = struct.Struct("<IHBBQI")
TENSOR_ENTRY_SIZE = _TENSOR.size  # 20

MAX_STORAGES = 1 << 24
MAX_TENSORS = 1 << 24
MAX_NDIM = 64
MAX_SKELETON = 1 << 31
MAX_DATA = 1 << 62  # bytes of all storages together

# Stable dtype ids: never renumbered, never reused. (name, element size in bytes).
DTYPE_TABLE: dict[int, tuple[str, int]] = {
    1: ("bool", 1),
    2: ("uint8", 1),
    3: ("int8", 1),
    4: ("int16", 2),
    5: ("int32", 4),
    6: ("int64", 8),
    7: ("float16", 2),
    8: ("bfloat16", 2),
    9: ("float32", 4),
    10: ("float64", 8),
    11: ("complex32", 4),
    12: ("complex64", 8),
    13: ("complex128", 16),
    14: ("uint16", 2),
    15: ("uint32", 4),
    16: ("uint64", 8),
    17: ("float8_e4m3fn", 1),
    18: ("float8_e5m2", 1),
    19: ("float8_e4m3fnuz", 1),
    20: ("float8_e5m2fnuz", 1),
    21: ("float8_e8m0fnu", 1),
    22: ("float4_e2m1fn_x2", 1),
    23: ("bits8", 1),
    24: ("bits16", 2),
    25: ("bits1x8", 1),
    26: ("bits2x4", 1),
    27: ("bits4x2", 1),
}
DEVICE_TABLE: dict[int, str] = {0: "cpu", 1: "cuda"}

# Resolved against the running torch: dtypes it lacks are simply absent here.
DTYPE_BY_ID: dict[int, torch.dtype] = {
    i: getattr(torch, name) for i, (name, _) in DTYPE_TABLE.items() if hasattr(torch, name)
}
ID_BY_DTYPE: dict[torch.dtype, int] = {d: i for i, d in DTYPE_BY_ID.items()}
ITEMSIZE_BY_ID: dict[int, int] = {i: size for i, (_, size) in DTYPE_TABLE.items()}
ID_BY_DEVICE: dict[str, int] = {name: i for i, name in DEVICE_TABLE.items()}


def checksum(data: object) -> int:
    """XXH3-64, seed 0, of a bytes-like object."""
    return xxhash.xxh3_64_intdigest(data)  # type: ignore[arg-type]


def checksum_state() -> xxhash.xxh3_64:
    """A running XXH3-64 (seed 0): `update(piece)` for each piece, then `intdigest()`."""
    return xxhash.xxh3_64()


def header_checksum(*parts: bytes) -> int:
    """XXH3-64 over the header's parts in order: storage table, tensor table, skeleton."""
    state = xxhash.xxh3_64()
    for part in parts:
        state.update(part)
    return int(state.intdigest())


def swap_unit(dtype_id: int) -> int:
    """Bytes reversed together when the stream's byte order differs from the host's."""
    name, size = DTYPE_TABLE[dtype_id]
    return size // 2 if name.startswith("complex") else size


def data_length(table: list[StorageEntry]) -> int:
    """Bytes from the end of the header to the end of the stream."""
    return sum(e.nbytes for e in table) + CHECKSUM_SIZE * len(table) + TRAILER_SIZE


def dtype_from_id(dtype_id: int, what: str) -> torch.dtype:
    dtype = DTYPE_BY_ID.get(dtype_id)
    if dtype is None:
        if dtype_id in DTYPE_TABLE:
            raise FormatError(
                f"{what} has dtype {DTYPE_TABLE[dtype_id][0]}, which torch "
                f"{torch.__version__} does not have"
            )
        raise FormatError(f"{what} has unknown dtype id {dtype_id}")
    return dtype


@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    flags: int
    storage_count: int
    tensor_count: int
    tensor_table_len: int
    skeleton_len: int

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & FLAG_BIG_ENDIAN)


def pack_preamble(
    storage_count: int, tensor_count: int, tensor_table_len: int, skeleton_len: int
) -> bytes:
    flags = FLAG_BIG_ENDIAN if sys.byteorder == "big" else 0
    head = _PREAMBLE.pack(
        MAGIC,
        MAJOR,
        MINOR,
        flags,
        storage_count,
        tensor_count,
        tensor_table_len,
        skeleton_len,
        0,
    )[:_PREAMBLE_SUMMED]
    return head + _U64.pack(checksum(head))


def unpack_preamble(data: bytes) -> Preamble:
    magic, major, minor, flags, count, tensors, tensor_len, skeleton_len, stored = _PREAMBLE.unpack(
        data
    )
    if magic != MAGIC:
        raise FormatError(f"not a serializer stream: expected magic {MAGIC!r}, found {magic!r}")
    found = checksum(data[:_PREAMBLE_SUMMED])
    if found != stored:
        raise ChecksumError("preamble", stored, found)
    if major != MAJOR:
        raise VersionError(
            f"stream has format version {major}.{minor}; this reader understands "
            f"{MAJOR}.x (up to {MAJOR}.{MINOR}): upgrade serializer to read it"
        )
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"preamble has unknown flags 0x{flags:08x}")
    if count > MAX_STORAGES:
        raise FormatError(f"storage count {count} exceeds the limit {MAX_STORAGES}")
    if tensors > MAX_TENSORS:
        raise FormatError(f"tensor count {tensors} exceeds the limit {MAX_TENSORS}")
    most = tensors * (TENSOR_ENTRY_SIZE + 16 * MAX_NDIM)
    if not tensors * TENSOR_ENTRY_SIZE <= tensor_len <= most:
        raise FormatError(f"tensor table length {tensor_len} is impossible for {tensors} tensors")
    if skeleton_len > MAX_SKELETON:
        raise FormatError(f"skeleton length {skeleton_len} exceeds the limit {MAX_SKELETON}")
    return Preamble(major, minor, flags, count, tensors, tensor_len, skeleton_len)


class StorageEntry(NamedTuple):
    nbytes: int
    dtype_id: int
    device_type: str
    device_index: int

    @property
    def location(self) -> str:
        """The location string torch.load's map_location sees, e.g. 'cpu' or 'cuda:0'."""
        if self.device_index < 0:
            return self.device_type
        return f"{self.device_type}:{self.device_index}"


def pack_storage_table(entries: list[tuple[int, int, int, int]]) -> bytes:
    """Entries of (nbytes, dtype id, device type id, device index)."""
    pack = _STORAGE.pack
    return b"".join([pack(n, d, t, 0, i) for n, d, t, i in entries])


def unpack_storage_table(data: bytes) -> list[StorageEntry]:
    table = []
    total = 0
    for index, (nbytes, dtype_id, device_id, reserved, device_index) in enumerate(
        _STORAGE.iter_unpack(data)
    ):
        what = f"storage {index}"
        device = DEVICE_TABLE.get(device_id)
        if device is None:
            raise FormatError(f"{what} has unknown device type id {device_id}")
        if dtype_id not in DTYPE_TABLE:
            raise FormatError(f"{what} has unknown dtype id {dtype_id}")
        if reserved != 0 or device_index < -1:
            raise FormatError(f"{what} has a malformed table entry")
        if nbytes % ITEMSIZE_BY_ID[dtype_id]:
            raise FormatError(
                f"{what} holds {nbytes} bytes, not a whole number of "
                f"{DTYPE_TABLE[dtype_id][0]} elements"
            )
        table.append(StorageEntry(nbytes, dtype_id, device, device_index))
        total += nbytes
    if total >= MAX_DATA:
        raise FormatError(f"the storages claim {total} bytes in all (the limit is 2^62)")
    return table


def pack_checksum(value: int) -> bytes:
    return _U64.pack(value)


def unpack_checksum(data: bytes | bytearray | memoryview) -> int:
    return int(_U64.unpack(data)[0])


def unpack_checksum_from(data: bytes | bytearray | memoryview, offset: int) -> int:
    """The checksum stored at `offset` of `data`."""
    value: int = _U64.unpack_from(data, offset)[0]
    return value


def pack_trailer(storage_count: int, offset: int) -> bytes:
    head = _TRAILER.pack(END_MAGIC, storage_count, offset, 0)[:24]
    return head + _U64.pack(checksum(head))


def check_trailer(data: bytes, storage_count: int, offset: int) -> None:
    magic, count, stored_offset, stored = _TRAILER.unpack(data)
    if magic != END_MAGIC:
        raise FormatError(f"expected end marker {END_MAGIC!r}, found {magic!r}")
    found = checksum(data[:24])
    if found != stored:
        raise ChecksumError("end marker", stored, found)
    if count != storage_count or stored_offset != offset:
        raise FormatError(
            f"end marker says {count} storages and {stored_offset} bytes, "
            f"but the stream held {storage_count} storages and {offset} bytes"
        )


# The tensor table. The skeleton's persistent ids are indices into it.
TENSOR = 0
PARAMETER = 1
_REQUIRES_GRAD = 1


class TensorRef(NamedTuple):
    kind: int
    storage: int
    dtype_id: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    requires_grad: bool


def pack_tensor(
    kind: int,
    storage: int,
    dtype_id: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    offset: int,
    requires_grad: bool,
) -> bytes:
    ndim = len(shape)
    head = _TENSOR.pack(
        storage, dtype_id, kind, _REQUIRES_GRAD if requires_grad else 0, offset, ndim
    )
    return head + struct.pack(f"<{2 * ndim}Q", *shape, *stride)


def unpack_tensor_table(data: bytes, count: int, table: list[StorageEntry]) -> list[TensorRef]:
    """Parse and validate every tensor entry against the storage table."""
    refs: list[TensorRef] = []
    append = refs.append
    pos = 0
    end = len(data)
    unpack_head = _TENSOR.unpack_from
    head_size = TENSOR_ENTRY_SIZE
    dims_structs: dict[int, struct.Struct] = {}
    itemsizes = ITEMSIZE_BY_ID
    storages = len(table)
    for index in range(count):
        if pos + head_size > end:
            raise FormatError(f"tensor table ends inside tensor {index}")
        storage, dtype_id, kind, flags, offset, ndim = unpack_head(data, pos)
        pos += head_size
        dims_struct = dims_structs.get(ndim)
        if dims_struct is None:
            if ndim > MAX_NDIM:
                raise FormatError(f"tensor {index} has {ndim} dimensions (at most {MAX_NDIM})")
            dims_struct = dims_structs[ndim] = struct.Struct(f"<{2 * ndim}Q")
        if pos + dims_struct.size > end:
            raise FormatError(f"tensor table ends inside tensor {index}")
        dims = dims_struct.unpack_from(data, pos)
        pos += dims_struct.size
        shape, stride = dims[:ndim], dims[ndim:]
        if kind > PARAMETER or flags & ~_REQUIRES_GRAD:
            raise FormatError(f"tensor {index} has unknown kind {kind} or flags {flags}")
        if storage >= storages:
            raise FormatError(f"tensor {index} names storage {storage} of {storages}")
        entry = table[storage]
        itemsize = itemsizes.get(dtype_id)
        if itemsize is None:
            raise FormatError(f"tensor {index} has unknown dtype id {dtype_id}")
        if itemsize != itemsizes[entry.dtype_id]:
            raise FormatError(
                f"tensor {index} of dtype {DTYPE_TABLE[dtype_id][0]} views storage {storage} "
                f"of dtype {DTYPE_TABLE[entry.dtype_id][0]}"
            )
        if ndim == 1:
            last = offset + (shape[0] - 1) * stride[0] if shape[0] else -1
        elif 0 in shape:
            last = -1
        else:
            last = offset
            for n, st in zip(shape, stride, strict=True):
                last += (n - 1) * st
        if (last + 1) * itemsize > entry.nbytes:
            raise FormatError(
                f"tensor {index} of shape {list(shape)}, stride {list(stride)}, offset "
                f"{offset} reaches past the {entry.nbytes} bytes of storage {storage}"
            )
        append(TensorRef(kind, storage, dtype_id, shape, stride, offset, bool(flags)))
    if pos != end:
        raise FormatError(f"tensor table has {end - pos} bytes after its last entry")
    return refs
