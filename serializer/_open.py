"""serializer.open: random access to one stream in a seekable source, in the spirit of
safetensors' `safe_open`.

The header is read once; `get_tensor` then seeks to the one record its tensor needs, reads it
and verifies it against its checksum. In a local file, that record is not copied: the file is
mapped copy-on-write once, and the tensor is a view of its pages, verified by hashing them
(the pages stay in memory as the tensor's own; writes to it never reach the file).
`get_slice(key)[start:stop]` reads only the bytes of
those rows of a contiguous tensor, which a per-record checksum cannot verify on their own
(`verify=True` reads and checks the whole record first).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from types import TracebackType
from typing import Any

import torch

from . import _files, _format
from ._build import is_contiguous, rebuild, refs_of, unpickling
from ._byteio import ByteSource, tensor_memory
from ._errors import ChecksumError, MismatchError, TruncatedError, UnsupportedError
from ._format import TensorRef
from ._index import StreamIndex, index_of
from ._placement import MapLocation, place_bytes
from ._read import Header, allocate, byteswap, read_header
from ._records import RecordReader
from ._registry import find_backend


class StreamFile:
    """One stream opened for random access (`serializer.open`); use it as a context manager."""

    def __init__(
        self,
        src: Any,
        map_location: MapLocation = None,
        *,
        weights_only: bool | None = True,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._map_location = map_location
        self._stack = contextlib.ExitStack()
        try:
            f = self._stack.enter_context(_files.source(src, storage_options))
            seekable = getattr(f, "seekable", None)
            if seekable is None or not seekable():
                raise UnsupportedError(
                    "serializer.open needs a seekable source (a file, an fsspec file, BytesIO); "
                    "use serializer.load or load_keys for sockets and pipes"
                )
            self._mapping = _mappable(f)  # (file, where the stream begins) or None
            self._mapped: mmap.mmap | None = None
            self._bytes = ByteSource(f)
            self._records = RecordReader(self._bytes)
            self._stack.callback(self._records.close)
            self._header: Header = read_header(self._bytes)
            pickle_module, weights_only = unpickling(None, weights_only)
            self._refs: dict[str, TensorRef] = dict(
                refs_of(self._header, weights_only, pickle_module, {})
            )
            self._data_start = self._bytes.offset
            self._record_at = []
            at = self._data_start
            for entry in self._header.table:
                self._record_at.append(at)
                at += entry.nbytes + _format.CHECKSUM_SIZE
            self._index: StreamIndex | None = None
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> StreamFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def keys(self) -> list[str]:
        """The dotted keys of the stream's tensors, as `read_index` lists them."""
        return list(self._refs)

    @property
    def index(self) -> StreamIndex:
        """What `read_index` returns for this stream."""
        if self._index is None:
            at_end = self._data_start + sum(
                e.nbytes + _format.CHECKSUM_SIZE for e in self._header.table
            )
            nbytes = at_end + _format.TRAILER_SIZE
            self._index = index_of(self._header, list(self._refs.items()), nbytes)
        return self._index

    def _ref(self, key: str) -> TensorRef:
        ref = self._refs.get(key)
        if ref is None:
            raise MismatchError(f"no tensor {key!r} in the stream")
        return ref

    def _seek(self, offset: int, nbytes: int) -> None:
        if not self._bytes.skip(offset - self._bytes.offset):
            raise UnsupportedError("the source stopped seeking")
        self._bytes.expect(nbytes)

    def _place(self, data: torch.Tensor, location: str) -> torch.Tensor:
        """`data` (CPU bytes of one storage, or part of one) where map_location puts it."""
        return place_bytes(data, location, self._map_location)

    def _storage(self, index: int) -> torch.Tensor:
        """The bytes of storage `index`, read and verified."""
        if self._mapping is not None:
            return self._mapped_storage(index)
        entry = self._header.table[index]
        at = self._record_at[index]
        self._bytes.plan([(at, at + entry.nbytes + _format.CHECKSUM_SIZE)])
        self._seek(at, entry.nbytes + _format.CHECKSUM_SIZE)
        cpu = find_backend("cpu")
        assert cpu is not None
        data = allocate(cpu, entry.nbytes, torch.device("cpu"), index)
        cpu.read_many([(data, index)], self._records)
        if self._header.swapped:
            byteswap(data, entry.dtype_id)
        return self._place(data, entry.location)

    def _mapped_storage(self, index: int) -> torch.Tensor:
        """`_storage`, as a view of the mapped file's pages, verified by hashing them."""
        assert self._mapping is not None
        f, base = self._mapping
        if self._mapped is None:
            self._mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        mapped = self._mapped
        entry = self._header.table[index]
        at = base + self._record_at[index]
        if at + entry.nbytes + _format.CHECKSUM_SIZE > len(mapped):
            raise TruncatedError(f"storage {index}", entry.nbytes, max(len(mapped) - at, 0))
        with memoryview(mapped) as view:
            found = _format.checksum(view[at : at + entry.nbytes])
            stored = _format.unpack_checksum_from(view, at + entry.nbytes)
        if stored != found:
            raise ChecksumError(f"storage {index}", stored, found, storage=index)
        if entry.nbytes:
            data = torch.frombuffer(mapped, dtype=torch.uint8, count=entry.nbytes, offset=at)
        else:
            data = torch.empty(0, dtype=torch.uint8)
        if self._header.swapped:
            byteswap(data, entry.dtype_id)
        return self._place(data, entry.location)

    def get_tensor(self, key: str) -> torch.Tensor:
        """The tensor `key`: its storage's record is read and verified (a view of a storage
        reads the whole storage, as `load` would)."""
        ref = self._ref(key)
        return rebuild(ref, self._storage(ref.storage))

    def get_slice(self, key: str) -> _Slice:
        """Rows of tensor `key` by ``[start:stop]`` (first dimension, step 1)."""
        return _Slice(self, key, self._ref(key))


class _Slice:
    def __init__(self, file: StreamFile, key: str, ref: TensorRef) -> None:
        self._file = file
        self._key = key
        self._ref = ref

    @property
    def shape(self) -> tuple[int, ...]:
        return self._ref.shape

    def __getitem__(self, rows: slice) -> torch.Tensor:
        ref = self._ref
        if not isinstance(rows, slice) or not ref.shape:
            raise TypeError(f"get_slice({self._key!r}) takes [start:stop] of its first dimension")
        start, stop, step = rows.indices(ref.shape[0])
        if step != 1:
            raise TypeError("get_slice takes rows with step 1")
        stop = max(start, stop)
        if not is_contiguous(ref.shape, ref.stride):  # a view: read its whole storage
            return self._file.get_tensor(self._key)[start:stop]
        dtype = _format.dtype_from_id(ref.dtype_id, f"tensor {self._key!r}")
        itemsize = _format.ITEMSIZE_BY_ID[ref.dtype_id]
        row = ref.stride[0] * itemsize
        first = (ref.offset * itemsize) + start * row
        nbytes = (stop - start) * row
        file = self._file
        at = file._record_at[ref.storage] + first
        file._bytes.plan([(at, at + nbytes)])
        file._seek(at, nbytes)
        data = torch.empty(nbytes, dtype=torch.uint8)
        file._bytes.readinto(tensor_memory(data), f"rows of {self._key!r}")
        entry = file._header.table[ref.storage]
        if file._header.swapped:
            byteswap(data, entry.dtype_id)
        data = file._place(data, entry.location)
        t = data.view(dtype).reshape((stop - start, *ref.shape[1:]))
        if ref.requires_grad:
            t.requires_grad_(True)
        return t


def open(  # noqa: A001 (serializer.open, as the issue names it; safetensors has safe_open)
    src: Any,
    map_location: MapLocation = None,
    *,
    weights_only: bool | None = True,
    storage_options: dict[str, Any] | None = None,
) -> StreamFile:
    """Open the stream in `src` (a seekable file object, a local path or a URL) for random
    access: ``with serializer.open(path) as f: f.get_tensor("w")``."""
    return StreamFile(src, map_location, weights_only=weights_only, storage_options=storage_options)


__all__ = ["StreamFile", "open"]


def _mappable(f: Any) -> tuple[Any, int] | None:
    """`f` and where the stream begins in it, if `f` is a regular local file (which can be
    mapped); None for anything else (fsspec files, BytesIO, pipes)."""
    try:
        fd = f.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f, int(f.tell())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
