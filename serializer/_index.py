"""read_index: a stream's table of contents, without loading its tensors' data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import _format
from ._build import RecordError, located, refs_of, unpickling
from ._format import StorageEntry, TensorRef
from ._read import Header, check_trailer, read_header, reading, skip_records


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a stream, as listed by `read_index`."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    storage: int
    nbytes: int
    location: str
    requires_grad: bool
    parameter: bool


@dataclass(frozen=True)
class StreamIndex:
    """A stream's table of contents."""

    version: tuple[int, int]
    tensors: list[TensorEntry]
    storages: list[StorageEntry]
    nbytes: int

    def __getitem__(self, key: str) -> TensorEntry:
        for entry in self.tensors:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [entry.key for entry in self.tensors]


def read_index(
    f: Any,
    *,
    weights_only: bool | None = True,
    pickle_module: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> StreamIndex:
    """List a stream's tensors without loading their data, and consume the stream.

    A seekable file is skipped over; any other stream is read through and its records
    verified.
    """
    pickle_module, weights_only = unpickling(pickle_module, weights_only)
    with reading(f, storage_options) as stream:
        src = stream.bytes
        start = src.offset
        header = read_header(src)
        refs = refs_of(header, weights_only, pickle_module, {})
        tensors_of(header, refs)  # a dtype this torch lacks fails before the records are read
        try:
            skip_records(stream, header, range(len(header.table)))
        except RecordError as e:
            raise located(e, header, refs) from None
        check_trailer(src, header)
        return index_of(header, refs, src.offset - start)


def tensors_of(header: Header, refs: list[tuple[str, TensorRef]]) -> list[TensorEntry]:
    tensors = []
    for key, ref in refs:
        dtype = _format.dtype_from_id(ref.dtype_id, f"tensor {key!r}")
        numel = 1
        for n in ref.shape:
            numel *= n
        tensors.append(
            TensorEntry(
                key,
                dtype,
                ref.shape,
                ref.stride,
                ref.offset,
                ref.storage,
                numel * _format.ITEMSIZE_BY_ID[ref.dtype_id],
                header.table[ref.storage].location,
                ref.requires_grad,
                ref.kind == _format.PARAMETER,
            )
        )
    return tensors


def index_of(header: Header, refs: list[tuple[str, TensorRef]], nbytes: int) -> StreamIndex:
    """The index of a stream of `nbytes` bytes with this header and outline."""
    pre = header.preamble
    return StreamIndex((pre.major, pre.minor), tensors_of(header, refs), header.table, nbytes)
