"""Hand-built streams: a second, independent writer of the layout of docs/FORMAT.md.

Tests use it to build streams that `serializer.save` never writes (hostile tables, forged
skeletons, other versions and flags) with valid checksums around them, and to take a saved
stream apart, edit it and seal it again. It is written from the specification with `struct`
and `xxhash` alone and imports nothing of `serializer`, so that testing/forge_test.py, which
compares its output with what `serializer.save` writes, checks the writer against the spec.

    stream = forge.stream(
        [(forge.storage_entry(8, forge.dtype_id("float32")), bytes(8))],
        [forge.tensor_entry(storage=0, dtype_id=9, shape=(2,), stride=(1,))],
        forge.skeleton({"t": forge.Ref(0)}),
    )

Nothing here validates what it packs: a forgery may break every rule of the format except
that its checksums match (`stream`, `reseal`) or that it has the layout's shape (`parse`).
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import xxhash

__all__ = [
    "CHECKSUM_SIZE",
    "DEVICE_TYPE_IDS",
    "DTYPE_TABLE",
    "EMPTY_CHECKSUM",
    "END_MAGIC",
    "FLAG_BIG_ENDIAN",
    "FLAG_REQUIRES_GRAD",
    "KIND_PARAMETER",
    "KIND_TENSOR",
    "MAGIC",
    "NATIVE_FLAGS",
    "PREAMBLE_SIZE",
    "STORAGE_ENTRY_SIZE",
    "TENSOR_ENTRY_SIZE",
    "TRAILER_SIZE",
    "Call",
    "ParseError",
    "Parts",
    "Preamble",
    "Ref",
    "StorageFields",
    "TensorFields",
    "checksum",
    "dtype_id",
    "parse",
    "patch_preamble",
    "preamble",
    "record",
    "reseal",
    "skeleton",
    "storage_entry",
    "stream",
    "tensor_entry",
    "trailer",
    "unpack_preamble",
    "unpack_storage_entry",
    "unpack_tensor_entry",
]

# ---------------------------------------------------------------------------- constants

MAGIC = b"\x89SRLZ\r\n\x1a"
END_MAGIC = b"\x1aSRLZEND"
FLAG_BIG_ENDIAN = 1  # preamble flags, bit 0
NATIVE_FLAGS = FLAG_BIG_ENDIAN if sys.byteorder == "big" else 0  # payloads in host order
KIND_TENSOR = 0
KIND_PARAMETER = 1
FLAG_REQUIRES_GRAD = 1  # tensor entry flags, bit 0
DEVICE_TYPE_IDS: dict[str, int] = {"cpu": 0, "cuda": 1}
EMPTY_CHECKSUM = 0x2D06800538D394C2  # xxh3 of b"", the checksum of a zero-size record

# magic, major, minor, flags, storage count, tensor count, tensor table length, skeleton length
_PREAMBLE_HEAD = struct.Struct("<8sHHIIIQQ")
_U64 = struct.Struct("<Q")
CHECKSUM_SIZE = _U64.size  # 8
PREAMBLE_SIZE = _PREAMBLE_HEAD.size + CHECKSUM_SIZE  # 48
# nbytes, dtype id, device type id, reserved, device index
_STORAGE = struct.Struct("<QHBBi")
STORAGE_ENTRY_SIZE = _STORAGE.size  # 16
# storage, dtype id, kind, flags, storage offset, ndim; then ndim sizes, ndim strides (u64)
_TENSOR_HEAD = struct.Struct("<IHBBQI")
TENSOR_ENTRY_SIZE = _TENSOR_HEAD.size  # 20, without sizes and strides
# end magic, storage count, bytes before the trailer
_TRAILER_HEAD = struct.Struct("<8sQQ")
TRAILER_SIZE = _TRAILER_HEAD.size + CHECKSUM_SIZE  # 32

# The spec's dtype ids: id -> (torch dtype name, element size in bytes).
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
_ID_BY_NAME = {name: i for i, (name, _) in DTYPE_TABLE.items()}


class ParseError(ValueError):
    """The bytes do not have the layout of a stream (or, when verifying, a checksum fails)."""


def dtype_id(dtype: object) -> int:
    """The spec's id of a dtype, given as a name ("float32") or a torch.dtype."""
    name = str(dtype).removeprefix("torch.")
    try:
        return _ID_BY_NAME[name]
    except KeyError:
        raise KeyError(f"dtype {name!r} is not in the format's dtype table") from None


def checksum(data: bytes | bytearray | memoryview) -> int:
    """XXH3-64, seed 0: every checksum of the format."""
    return int(xxhash.xxh3_64_intdigest(bytes(data)))


# ---------------------------------------------------------------------------- pieces


class Preamble(NamedTuple):
    """The preamble's fields, in the order of `preamble`'s parameters."""

    storage_count: int
    tensor_count: int
    tensor_table_len: int
    skeleton_len: int
    major: int = 1
    minor: int = 0
    flags: int = 0


def preamble(
    storage_count: int,
    tensor_count: int,
    tensor_table_len: int,
    skeleton_len: int,
    *,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
) -> bytes:
    """The 48-byte preamble, with its checksum over its first 40 bytes."""
    head = _PREAMBLE_HEAD.pack(
        MAGIC, major, minor, flags, storage_count, tensor_count, tensor_table_len, skeleton_len
    )
    return head + _U64.pack(checksum(head))


def unpack_preamble(data: bytes | bytearray) -> Preamble:
    """The fields of the preamble at the start of `data` (its checksum is not checked)."""
    if len(data) < PREAMBLE_SIZE:
        raise ParseError(f"{len(data)} bytes: shorter than a preamble")
    magic, major, minor, flags, storages, tensors, tensor_len, skeleton_len = (
        _PREAMBLE_HEAD.unpack_from(data)
    )
    if magic != MAGIC:
        raise ParseError(f"not a stream: magic {magic!r}")
    return Preamble(storages, tensors, tensor_len, skeleton_len, major, minor, flags)


class StorageFields(NamedTuple):
    """A storage table entry's fields, in the order of `storage_entry`'s parameters."""

    nbytes: int
    dtype_id: int
    device_type_id: int = 0
    device_index: int = -1
    reserved: int = 0


def storage_entry(
    nbytes: int,
    dtype_id: int,
    device_type_id: int = 0,
    device_index: int = -1,
    reserved: int = 0,
) -> bytes:
    """A 16-byte storage table entry; -1 is "no device index" (e.g. plain "cpu")."""
    return _STORAGE.pack(nbytes, dtype_id, device_type_id, reserved, device_index)


def unpack_storage_entry(entry: bytes) -> StorageFields:
    nbytes, dtype, device_type, reserved, device_index = _STORAGE.unpack(entry)
    return StorageFields(nbytes, dtype, device_type, device_index, reserved)


class TensorFields(NamedTuple):
    """A tensor table entry's fields, in the order of `tensor_entry`'s parameters."""

    storage: int
    dtype_id: int
    kind: int
    flags: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def tensor_entry(
    storage: int = 0,
    dtype_id: int = 9,
    kind: int = KIND_TENSOR,
    flags: int = 0,
    offset: int = 0,
    shape: Sequence[int] = (2,),
    stride: Sequence[int] = (1,),
    ndim: int | None = None,
) -> bytes:
    """A tensor table entry: 20 bytes, then the sizes and the strides (u64 each).

    `offset` is the storage offset in elements; `flags` bit 0 is requires_grad; `kind` is
    `KIND_TENSOR` or `KIND_PARAMETER`. `ndim` defaults to len(shape); giving another value,
    or a stride of another length than the shape, forges an entry that contradicts itself.
    """
    ndim = len(shape) if ndim is None else ndim
    head = _TENSOR_HEAD.pack(storage, dtype_id, kind, flags, offset, ndim)
    return head + struct.pack(f"<{len(shape) + len(stride)}Q", *shape, *stride)


def unpack_tensor_entry(data: bytes, pos: int = 0) -> tuple[TensorFields, int]:
    """The tensor entry at `pos` of a tensor table, and where the next one begins."""
    if pos + TENSOR_ENTRY_SIZE > len(data):
        raise ParseError(f"tensor table ends inside an entry at {pos}")
    storage, dtype, kind, flags, offset, ndim = _TENSOR_HEAD.unpack_from(data, pos)
    pos += TENSOR_ENTRY_SIZE
    size = 16 * ndim
    if pos + size > len(data):
        raise ParseError(f"tensor table ends inside the sizes and strides of an entry at {pos}")
    values = struct.unpack_from(f"<{2 * ndim}Q", data, pos)
    fields = TensorFields(storage, dtype, kind, flags, offset, values[:ndim], values[ndim:])
    return fields, pos + size


@dataclass(frozen=True)
class Ref:
    """Stands for a tensor in an object given to `skeleton`: pickled as persistent id `pid`
    (the index of a tensor table entry, or anything else a hostile skeleton names)."""

    pid: Any

    def __post_init__(self) -> None:
        if self.pid is None:
            raise ValueError("pickle cannot write None as a persistent id")


class Call:
    """Pickles as the call `func(*args)` (a GLOBAL and a REDUCE): what a skeleton that runs
    code looks like, or a backend's reduction forged with arguments of the test's choosing.
    `func` must be importable by its module and qualified name."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (self.func, self.args)


class _RefPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, protocol: int, ref: Callable[[Any], Any] | None) -> None:
        super().__init__(file, protocol)
        self._ref = ref

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Ref):
            return obj.pid
        return None if self._ref is None else self._ref(obj)


def skeleton(obj: Any, *, protocol: int = 2, ref: Callable[[Any], Any] | None = None) -> bytes:
    """`obj` pickled with every `Ref(pid)` in it written as the persistent id `pid`.

    `ref`, if given, is asked about every other object: it returns a persistent id for it,
    or None to pickle it as usual (e.g. a function that maps tensors to entry indices).
    """
    buf = io.BytesIO()
    _RefPickler(buf, protocol, ref).dump(obj)
    return buf.getvalue()


def record(payload: bytes) -> bytes:
    """One record: the payload, then its checksum."""
    return bytes(payload) + _U64.pack(checksum(payload))


def trailer(storage_count: int, offset: int) -> bytes:
    """The 32-byte trailer of a stream with `offset` bytes before it."""
    head = _TRAILER_HEAD.pack(END_MAGIC, storage_count, offset)
    return head + _U64.pack(checksum(head))


def stream(
    storages: Sequence[tuple[bytes, bytes]],
    tensors: Sequence[bytes],
    skeleton: bytes,
    *,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
) -> bytes:
    """A complete stream with valid checksums and trailer around arbitrary content.

    `storages` are (storage table entry, payload) pairs, one record each; `tensors` are the
    tensor table's entries (their bytes joined, their number the preamble's tensor count).
    The preamble's counts and lengths are those of what is given.
    """
    table = b"".join(entry for entry, _ in storages)
    tensor_table = b"".join(tensors)
    header = table + tensor_table + skeleton
    out = bytearray(
        preamble(
            len(storages),
            len(tensors),
            len(tensor_table),
            len(skeleton),
            major=major,
            minor=minor,
            flags=flags,
        )
    )
    out += header + _U64.pack(checksum(header))
    for _, payload in storages:
        out += record(payload)
    out += trailer(len(storages), len(out))
    return bytes(out)


# ---------------------------------------------------------------------------- taking apart


@dataclass(frozen=True)
class Parts:
    """A stream taken apart by `parse`: its content, and where each piece lies in it."""

    preamble: Preamble
    storages: tuple[tuple[bytes, bytes], ...]  # (storage table entry, payload)
    tensors: tuple[bytes, ...]  # tensor table entries
    skeleton: bytes
    tensor_table_offset: int
    skeleton_offset: int
    header_checksum_offset: int
    record_offsets: tuple[int, ...]  # where each record's payload begins
    trailer_offset: int
    storage_table_offset: int = field(default=PREAMBLE_SIZE)

    @property
    def records_offset(self) -> int:
        """Where the header ends and the first record (or the trailer) begins."""
        return self.header_checksum_offset + CHECKSUM_SIZE

    @property
    def storage_fields(self) -> list[StorageFields]:
        return [unpack_storage_entry(entry) for entry, _ in self.storages]

    @property
    def tensor_fields(self) -> list[TensorFields]:
        return [unpack_tensor_entry(entry)[0] for entry in self.tensors]

    def stream(
        self,
        *,
        storages: Sequence[tuple[bytes, bytes]] | None = None,
        tensors: Sequence[bytes] | None = None,
        skeleton: bytes | None = None,
        major: int | None = None,
        minor: int | None = None,
        flags: int | None = None,
    ) -> bytes:
        """The stream again, with valid checksums, with the given parts replaced."""
        pre = self.preamble
        return stream(
            self.storages if storages is None else storages,
            self.tensors if tensors is None else tensors,
            self.skeleton if skeleton is None else skeleton,
            major=pre.major if major is None else major,
            minor=pre.minor if minor is None else minor,
            flags=pre.flags if flags is None else flags,
        )


def _verify(what: str, stored: int, data: bytes | bytearray) -> None:
    found = checksum(data)
    if stored != found:
        raise ParseError(f"{what}: stored checksum {stored:016x}, computed {found:016x}")


def parse(data: bytes | bytearray, *, verify: bool = True) -> Parts:
    """Take one whole stream apart (`data` must end where the stream does).

    Only the layout is read: versions, flags, ids and limits are not checked. With `verify`,
    every checksum and the trailer's counts are, too.
    """
    data = bytes(data)
    pre = unpack_preamble(data)
    if verify:
        _verify("preamble", _U64.unpack_from(data, 40)[0], data[:40])
    pos = PREAMBLE_SIZE
    table_end = pos + STORAGE_ENTRY_SIZE * pre.storage_count
    tensor_end = table_end + pre.tensor_table_len
    skeleton_end = tensor_end + pre.skeleton_len
    if skeleton_end + CHECKSUM_SIZE > len(data):
        raise ParseError(f"the header claims {skeleton_end + 8} bytes; the data has {len(data)}")
    entries = [data[p : p + STORAGE_ENTRY_SIZE] for p in range(pos, table_end, STORAGE_ENTRY_SIZE)]
    tensor_table = data[table_end:tensor_end]
    tensors = []
    at = 0
    for _ in range(pre.tensor_count):
        _, end = unpack_tensor_entry(tensor_table, at)
        tensors.append(tensor_table[at:end])
        at = end
    if at != len(tensor_table):
        raise ParseError(f"tensor table has {len(tensor_table) - at} bytes after its last entry")
    if verify:
        _verify("header", _U64.unpack_from(data, skeleton_end)[0], data[pos:skeleton_end])
    pos = skeleton_end + CHECKSUM_SIZE
    storages, record_offsets = [], []
    for index, entry in enumerate(entries):
        nbytes = unpack_storage_entry(entry).nbytes
        if pos + nbytes + CHECKSUM_SIZE > len(data):
            raise ParseError(f"record {index} ({nbytes} bytes) runs past the data")
        payload = data[pos : pos + nbytes]
        if verify:
            _verify(f"record {index}", _U64.unpack_from(data, pos + nbytes)[0], payload)
        storages.append((entry, payload))
        record_offsets.append(pos)
        pos += nbytes + CHECKSUM_SIZE
    if pos + TRAILER_SIZE != len(data):
        raise ParseError(f"the trailer should span {pos}..{pos + TRAILER_SIZE}, not ..{len(data)}")
    if verify:
        magic, count, before = _TRAILER_HEAD.unpack_from(data, pos)
        if magic != END_MAGIC or count != pre.storage_count or before != pos:
            raise ParseError(f"trailer {data[pos : pos + 24]!r} does not end this stream")
        _verify("trailer", _U64.unpack_from(data, pos + 24)[0], data[pos : pos + 24])
    return Parts(
        preamble=pre,
        storages=tuple(storages),
        tensors=tuple(tensors),
        skeleton=data[tensor_end:skeleton_end],
        tensor_table_offset=table_end,
        skeleton_offset=tensor_end,
        header_checksum_offset=skeleton_end,
        record_offsets=tuple(record_offsets),
        trailer_offset=pos,
    )


def reseal(data: bytearray) -> None:
    """Recompute, in place, every checksum of a stream whose bytes a test has edited: the
    preamble's, the header's, each record's and the trailer's.

    Nothing else is changed (counts and lengths stay as edited), but they must still describe
    where the pieces lie in `data`, which must end where the stream does.
    """
    pre = unpack_preamble(data)
    _U64.pack_into(data, 40, checksum(data[:40]))
    table_end = PREAMBLE_SIZE + STORAGE_ENTRY_SIZE * pre.storage_count
    header_end = table_end + pre.tensor_table_len + pre.skeleton_len
    if header_end + CHECKSUM_SIZE > len(data):
        raise ParseError(f"the header claims {header_end + 8} bytes; the data has {len(data)}")
    _U64.pack_into(data, header_end, checksum(data[PREAMBLE_SIZE:header_end]))
    pos = header_end + CHECKSUM_SIZE
    for entry in range(PREAMBLE_SIZE, table_end, STORAGE_ENTRY_SIZE):
        nbytes = _STORAGE.unpack_from(data, entry)[0]
        if pos + nbytes + CHECKSUM_SIZE > len(data):
            raise ParseError(f"a record of {nbytes} bytes at {pos} runs past the data")
        _U64.pack_into(data, pos + nbytes, checksum(data[pos : pos + nbytes]))
        pos += nbytes + CHECKSUM_SIZE
    if pos + TRAILER_SIZE != len(data):
        raise ParseError(f"the trailer should span {pos}..{pos + TRAILER_SIZE}, not ..{len(data)}")
    _U64.pack_into(data, pos + 24, checksum(data[pos : pos + 24]))


def patch_preamble(data: bytes | bytearray, **changes: int) -> bytes:
    """`data` with preamble fields (names of `Preamble`) replaced and the preamble's
    checksum recomputed; the bytes after the preamble are left as they are."""
    fields = unpack_preamble(data)._replace(**changes)
    return preamble(**fields._asdict()) + bytes(data[PREAMBLE_SIZE:])
