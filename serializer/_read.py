"""Reading a stream's framing: the preamble and header, the records of its storages, and the
trailer. `_format` unpacks the bytes; this module reads them in order and bounds the reads."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import _files, _format
from ._byteio import ByteSource
from ._errors import ChecksumError, EndOfStream, FormatError, TruncatedError, short_repr
from ._format import StorageEntry, TensorRef
from ._gc import gc_paused
from ._placement import MapLocation, apply_callable, maps_on_cpu_first, resolve_device
from ._records import RecordReader
from ._registry import Backend, as_bytes, find_backend
from ._ring import runs

_CPU = torch.device("cpu")
_READ_BATCH = 1024  # storages handed to a backend at once
_HOST_BIG_ENDIAN = sys.byteorder == "big"


@dataclass
class Stream:
    """One stream being read from a file object: its bytes and its records."""

    bytes: ByteSource
    records: RecordReader


@contextlib.contextmanager
def reading(f: Any, storage_options: dict[str, Any] | None = None) -> Iterator[Stream]:
    """Read one stream from `f` (a file object, path or URL: `_files`) inside the block (the
    hasher's thread ends with it), with the GC paused except while waiting for data."""
    with _files.source(f, storage_options) as opened:
        source = ByteSource(opened)
        records = RecordReader(source)
        try:
            with gc_paused():
                yield Stream(source, records)
        finally:
            records.close()


@dataclass(frozen=True)
class Header:
    preamble: _format.Preamble
    table: list[StorageEntry]
    tensors: list[TensorRef]
    skeleton: bytes

    @property
    def swapped(self) -> bool:
        """Whether the stream's byte order differs from this host's."""
        return self.preamble.big_endian != _HOST_BIG_ENDIAN


Progress = Callable[[int, int], None]


def watch(src: ByteSource, header: Header, progress: Progress | None) -> None:
    """Report to `progress` (bytes done, bytes of the whole stream) now that the header is
    read, and then as bytes arrive (and as records are seeked past)."""
    if progress is None:
        return
    total = src.offset + _format.data_length(header.table)
    src.report = lambda done: progress(min(done, total), total)
    progress(src.offset, total)


def first_byte(src: ByteSource) -> bytes:
    """The first byte of a stream, or `EndOfStream` if the source ends before it."""
    try:
        return src.read(1, "magic")
    except TruncatedError:
        raise EndOfStream("the source ended where a stream could begin") from None


def read_header(src: ByteSource, first: bytes | None = None) -> Header:
    """The header of a serializer stream (whose first byte `first` was read already)."""
    if first is None:
        first = first_byte(src)
    pre = _format.unpack_preamble(first + src.read(_format.PREAMBLE_SIZE - 1, "preamble"))
    table_len = pre.storage_count * _format.STORAGE_ENTRY_SIZE
    src.expect(table_len + pre.tensor_table_len + pre.skeleton_len + _format.CHECKSUM_SIZE)
    table_bytes = src.read(table_len, "storage table")
    tensor_bytes = src.read(pre.tensor_table_len, "tensor table")
    skeleton = src.read(pre.skeleton_len, "skeleton")
    stored = _format.unpack_checksum(src.read(_format.CHECKSUM_SIZE, "checksum of the header"))
    found = _format.header_checksum(table_bytes, tensor_bytes, skeleton)
    if stored != found:
        raise ChecksumError("header", stored, found)
    table = _format.unpack_storage_table(table_bytes)
    tensors = _format.unpack_tensor_table(tensor_bytes, pre.tensor_count, table)
    src.expect(_format.data_length(table))
    return Header(pre, table, tensors, skeleton)


def check_trailer(src: ByteSource, header: Header) -> None:
    offset = src.offset
    _format.check_trailer(src.read(_format.TRAILER_SIZE, "end marker"), len(header.table), offset)


def skip_records(stream: Stream, header: Header, indices: range) -> None:
    """Pass over the records of storages `indices` (consecutive): seek past them where the
    source can seek (they are then not read, nor verified), else read and verify them."""
    nbytes = sum(header.table[i].nbytes for i in indices) + _format.CHECKSUM_SIZE * len(indices)
    if nbytes and stream.bytes.skip(nbytes):
        return
    for index in indices:
        stream.records.skip_record(header.table[index].nbytes, index)


def plan_records(stream: Stream, header: Header, wanted: Collection[int] | None) -> None:
    """Tell the source which records will be read (all when `wanted` is None), from here
    (the end of the header): a remote one fetches them ahead, several ranges at once."""
    spans: list[tuple[int, int]] = []
    at = stream.bytes.offset
    for index, entry in enumerate(header.table):
        end = at + entry.nbytes + _format.CHECKSUM_SIZE
        if wanted is None or index in wanted:
            if spans and spans[-1][1] == at:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((at, end))
        at = end
    stream.bytes.plan(spans)


def byteswap(data: torch.Tensor, dtype_id: int) -> None:
    """Reverse the bytes of each element of `data` (in place), as the stream's dtype says."""
    unit = _format.swap_unit(dtype_id)
    if unit > 1 and data.numel():
        rows = data.view(-1, unit)
        rows.copy_(rows.flip(-1))


def read_storages(
    stream: Stream,
    header: Header,
    map_location: MapLocation,
    wanted: Collection[int] | None,
) -> list[torch.Tensor | None]:
    """Read every record and the trailer; keep the wanted storages (all when `wanted` is
    None), each as a 1-D uint8 tensor over its bytes, placed as `map_location` says."""
    on_cpu_first = maps_on_cpu_first(map_location)
    resolved: dict[str, torch.device] = {}
    devices: list[torch.device | None] = []
    for index, entry in enumerate(header.table):
        if wanted is not None and index not in wanted:
            devices.append(None)
        elif on_cpu_first:
            devices.append(_CPU)
        else:
            device = resolved.get(entry.location)
            if device is None:
                device = resolved[entry.location] = resolve_device(entry.location, map_location)
            devices.append(device)
    datas: list[torch.Tensor | None] = [None] * len(devices)
    plan_records(stream, header, wanted)
    records = stream.records
    for device, run in runs(devices):
        if device is None:
            skip_records(stream, header, run)
            continue
        backend = find_backend(device.type)
        assert backend is not None  # resolve_device found it
        for batch in range(run.start, run.stop, _READ_BATCH):  # bounded bookkeeping
            jobs = []
            for index in range(batch, min(batch + _READ_BATCH, run.stop)):
                data = allocate(backend, header.table[index].nbytes, device, index)
                datas[index] = data
                jobs.append((data, index))
            backend.read_many(jobs, records)
    check_trailer(stream.bytes, header)
    for index, (entry, loaded) in enumerate(zip(header.table, datas, strict=True)):
        if loaded is None:
            continue
        if header.swapped:
            byteswap(loaded, entry.dtype_id)
        if on_cpu_first:
            storage = loaded.untyped_storage()
            placed = apply_callable(map_location, storage, entry.location)  # type: ignore[arg-type]
            datas[index] = as_bytes(placed)
    return datas


def allocate(backend: Backend, nbytes: int, device: torch.device, index: int) -> torch.Tensor:
    """Memory for storage `index`. Untouched pages cost nothing until its record's bytes
    arrive; a size no allocator can give is the stream's error."""
    try:
        return backend.empty(nbytes, device)
    except (RuntimeError, MemoryError, TypeError, ValueError, OverflowError) as e:
        raise FormatError(
            f"storage {index} claims {nbytes} bytes, which cannot be allocated on {device}: "
            f"{type(e).__name__}: {str(e)[:200]}"
        ) from None


def tensor_ref(header: Header, pid: Any) -> TensorRef:
    """The tensor table entry a skeleton's persistent id names."""
    if type(pid) is not int or not 0 <= pid < len(header.tensors):
        raise FormatError(f"skeleton names tensor {short_repr(pid)} of {len(header.tensors)}")
    return header.tensors[pid]
