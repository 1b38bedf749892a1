"""load(mmap=True): storages over the file's own pages, as ``torch.load(mmap=True)``.

The file is mapped copy-on-write (``mmap.ACCESS_COPY``: tensors are writable, the file never
changes) and each storage is a zero-copy buffer over its record's bytes (`torch.frombuffer`
at the record's offset; records need no alignment for that). Nothing of a record is read
until a tensor over it is touched, so the load itself reads only the header and the trailer.

What is verified: the header's checksum, the trailer, and that the file is exactly as long
as its header says (so every record is there), before anything returns. What is not: the
records' checksums, which would read every page; `serializer verify PATH`, or a `load`
without `mmap`, verifies them.
"""

from __future__ import annotations

import mmap as _mm
import os
from typing import Any

import torch

from . import _format
from ._byteio import ByteSource
from ._errors import FormatError, TruncatedError, UnsupportedError
from ._placement import MapLocation, place_bytes
from ._read import Header, byteswap, check_trailer, read_header
from ._torch_compat import TORCH_STREAM_FIRST_BYTE


def mapped_storages(
    path: str, map_location: MapLocation
) -> tuple[Header, list[torch.Tensor | None]]:
    """The header of the stream in the file at `path`, and each storage as a 1-D uint8
    tensor over the file's pages (or placed as `map_location` says)."""
    with open(path, "rb", buffering=0) as f:
        src = ByteSource(f)
        first = src.read(1, "magic")
        if first == TORCH_STREAM_FIRST_BYTE:
            raise UnsupportedError(
                f"{path}: mmap=True reads streams of this format, not torch's _streaming_save"
            )
        header = read_header(src, first)
        start = src.offset  # records begin here, one after another, each with its checksum
        size = os.fstat(f.fileno()).st_size
        end = start + _format.data_length(header.table)
        if size < end:
            raise TruncatedError("records", end - start, max(size - start, 0))
        src.skip(end - start - _format.TRAILER_SIZE)
        check_trailer(src, header)
        if size != end:
            raise FormatError(f"{path}: {size - end} bytes follow the stream (mmap=True maps one)")
        mapping = _mm.mmap(f.fileno(), 0, access=_mm.ACCESS_COPY)
    datas: list[torch.Tensor | None] = []
    offset = start
    for entry in header.table:
        if entry.nbytes:
            data = torch.frombuffer(mapping, dtype=torch.uint8, count=entry.nbytes, offset=offset)
        else:
            data = torch.empty(0, dtype=torch.uint8)
        if header.swapped:
            byteswap(data, entry.dtype_id)  # the pages become the process's own
        datas.append(place_bytes(data, entry.location, map_location))
        offset += entry.nbytes + _format.CHECKSUM_SIZE
    return header, datas


def mmap_path(f: Any) -> str:
    """The local path `f` names, which mmap=True needs (as torch.load's)."""
    if isinstance(f, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(f))
        if "://" not in path:
            return path
    raise ValueError("f must be a local file path in order to use the mmap argument")
