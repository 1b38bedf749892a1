"""load and load_keys: one stream from a file object to an object, all of it or some keys."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from . import _files
from ._build import RecordError, at_path, build, find, located, outline, unpickling
from ._errors import EndOfStream, MismatchError
from ._format import TensorRef
from ._mmap import mapped_storages, mmap_path
from ._placement import MapLocation
from ._read import Progress, first_byte, read_header, read_storages, reading, watch
from ._torch_compat import TORCH_STREAM_FIRST_BYTE, load_torch_stream


def load(
    f: Any,
    map_location: MapLocation = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = True,
    mmap: bool | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    **pickle_load_args: Any,
) -> Any:
    """Read one stream from `f` and return the object; consumes exactly that stream.

    Same arguments and semantics as ``torch.distributed._serialization._streaming_load``;
    also reads streams written by that function. `f` is a binary file object, a socket, a
    local path, or a URL (fsspec, with `storage_options`). `progress`, if given, is called
    with (bytes read, bytes of the whole stream) once the header is read and then as bytes
    arrive, the last time with both equal (streams of this format; not torch's).

    ``mmap=True`` (`f` a local path, holding one stream of this format): tensors over the
    file's pages, read only when touched, as ``torch.load(mmap=True)``; the header, the
    trailer and the file's length are verified, the records' checksums are not (see
    `_mmap`).
    """
    pickle_module, weights_only = unpickling(pickle_module, weights_only)
    if mmap:
        header, datas = mapped_storages(mmap_path(f), map_location)
        return build(header, datas, weights_only, pickle_module, pickle_load_args)
    with reading(f, storage_options) as stream:
        first = first_byte(stream.bytes)
        if first == TORCH_STREAM_FIRST_BYTE:
            return load_torch_stream(
                first, stream.bytes, map_location, pickle_module, weights_only, pickle_load_args
            )
        header = read_header(stream.bytes, first)
        watch(stream.bytes, header, progress)
        try:
            storages = read_storages(stream, header, map_location, None)
        except RecordError as e:
            raise located(e, header) from None
        return build(header, storages, weights_only, pickle_module, pickle_load_args)


def load_keys(
    f: Any,
    keys: Collection[Any],
    map_location: MapLocation = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = True,
    storage_options: dict[str, Any] | None = None,
    **pickle_load_args: Any,
) -> dict[Any, Any]:
    """Load only `keys` of a stream whose object is a mapping (a state dict): its own keys,
    or the dotted keys `read_index` lists (``"model.layer.0.weight"``).

    Only the header and the records of the tensors asked for are read where `f` can seek
    (a local file, an fsspec file, BytesIO); elsewhere the other records are read past and
    verified without being kept. Every record read is verified against its checksum.
    """
    pickle_module, weights_only = unpickling(pickle_module, weights_only)
    with reading(f, storage_options) as stream:
        header = read_header(stream.bytes)
        order: dict[int, int] = {}  # how sets' members are numbered (see _build.find)
        tree = outline(header, weights_only, pickle_module, pickle_load_args, order)
        if not isinstance(tree, Mapping):
            raise MismatchError(
                f"load_keys needs a stream holding a mapping, found {type(tree).__name__}"
            )
        parts: dict[Any, Any] = {}  # each key's part of the outline
        for k in keys:
            if k in tree:
                parts[k] = tree[k]
            elif isinstance(k, str):  # a dotted key, as read_index lists it
                with contextlib.suppress(KeyError):
                    parts[k] = at_path(tree, k, order)
        missing = [k for k in keys if k not in parts]
        if missing:
            raise MismatchError(f"keys not in the stream: {missing!r:.500}")
        wanted = {ref.storage for part in parts.values() for _, ref in find(part, TensorRef, order)}
        try:
            storages = read_storages(stream, header, map_location, wanted)
        except RecordError as e:
            raise located(e, header, find(tree, TensorRef, order)) from None
        built: dict[int, int] = {}
        obj = build(header, storages, weights_only, pickle_module, pickle_load_args, built)
        try:
            return {k: obj[k] if k in tree else at_path(obj, k, built) for k in keys}
        except KeyError as e:  # the built object differs from its outline (its own code)
            raise MismatchError(
                f"key {e.args[0]!r:.200} is in the outline, not the object"
            ) from None


def iter_load(
    f: Any, *, storage_options: dict[str, Any] | None = None, **load_args: Any
) -> Iterator[Any]:
    """Load stream after stream from `f` (a socket, a pipe, a file of streams written one
    after another) until it ends cleanly between two streams; `load_args` as for `load`.
    A source that ends inside a stream raises `TruncatedError`."""
    with _files.source(f, storage_options) as opened:
        while True:
            try:
                obj = load(opened, **load_args)
            except EndOfStream:
                return
            yield obj
