"""save: the object's skeleton and tables, then one record per storage, then the trailer."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import torch

from . import _files, _format, _pickling
from ._byteio import ByteSink
from ._errors import UnsupportedError
from ._gc import gc_paused
from ._records import RecordWriter
from ._registry import as_bytes, backend_for
from ._ring import runs

DEFAULT_PROTOCOL = 2  # torch.serialization.DEFAULT_PROTOCOL, kept for drop-in compatibility


class _Collector:
    """Turns each tensor into a reference, collecting every storage once."""

    def __init__(self) -> None:
        self.storages: list[torch.UntypedStorage] = []
        self.entries: list[tuple[int, int, int, int]] = []
        self.tensors: list[bytes] = []
        self._index: dict[int, int] = {}
        self._pids: dict[int, tuple[Any, int]] = {}  # id(tensor) -> (tensor, its entry)

    def __call__(self, obj: Any) -> int:
        seen = self._pids.get(id(obj))
        if seen is not None and seen[0] is obj:  # the same object again: one entry, one object
            return seen[1]
        pid = self._new_entry(obj)
        self._pids[id(obj)] = (obj, pid)
        return pid

    def _new_entry(self, obj: Any) -> int:
        if not isinstance(obj, torch.Tensor):
            raise UnsupportedError(
                f"bare {type(obj).__name__} objects are not supported; save a tensor that views it"
            )
        if type(obj) is torch.nn.Parameter:
            kind = _format.PARAMETER
        elif type(obj) is torch.Tensor:
            kind = _format.TENSOR
        else:
            raise UnsupportedError(f"tensor subclass {type(obj).__qualname__} is not supported")
        t = obj
        dtype_id = _check_savable(t)
        if t.is_conj() or t.is_neg():
            t = t.detach().resolve_conj().resolve_neg()
        if _is_zerotensor(t):  # no memory behind it (a null data pointer): save its zeros
            t = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        storage = t.untyped_storage()
        key = storage._cdata
        index = self._index.get(key)
        if index is not None:
            first = self.entries[index][1]
            if _format.ITEMSIZE_BY_ID[first] != _format.ITEMSIZE_BY_ID[dtype_id]:
                if storage.nbytes():
                    raise UnsupportedError(
                        f"one storage is viewed as both {_format.DTYPE_TABLE[first][0]} and "
                        f"{_format.DTYPE_TABLE[dtype_id][0]}, which have different element "
                        f"sizes; save a copy (.clone()) of one of them"
                    )
                index = None  # an empty storage: each view may have its own (nothing is lost)
        if index is None:
            index = len(self.storages)
            self._index.setdefault(key, index)
            self.storages.append(storage)
            device = t.device
            self.entries.append(
                (
                    storage.nbytes(),
                    dtype_id,
                    _format.ID_BY_DEVICE[device.type],
                    -1 if device.index is None else device.index,
                )
            )
        self.tensors.append(
            _format.pack_tensor(
                kind,
                index,
                dtype_id,
                tuple(t.shape),
                t.stride(),
                t.storage_offset(),
                obj.requires_grad,
            )
        )
        return len(self.tensors) - 1


def _is_zerotensor(t: torch.Tensor) -> bool:
    check = getattr(t, "_is_zerotensor", None)
    return bool(check is not None and check())


def _check_savable(t: torch.Tensor) -> int:
    if t.is_nested:
        raise UnsupportedError("nested tensors are not supported; save their components")
    if t.is_quantized:
        raise UnsupportedError(
            "quantized tensors are not supported; save .int_repr() and the quantization "
            "parameters instead"
        )
    if t.layout != torch.strided:
        raise UnsupportedError(
            f"tensors with layout {t.layout} are not supported; convert with .to_dense()"
        )
    backend_for(t.device.type)  # UnsupportedError for a device type the format lacks
    dtype_id = _format.ID_BY_DTYPE.get(t.dtype)
    if dtype_id is None:
        raise UnsupportedError(f"dtype {t.dtype} is not in the format's dtype table")
    return dtype_id


def save(
    obj: object,
    f: Any,
    pickle_module: Any = pickle,
    pickle_protocol: int = DEFAULT_PROTOCOL,
    *,
    sync: bool = True,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write `obj` to `f` as one stream: a binary file object or socket, a local path
    (written atomically: a crash leaves the old file or none; synced unless ``sync=False``),
    or a URL (fsspec, with `storage_options`).

    Same arguments as ``torch.distributed._serialization._streaming_save``; pickle protocols
    0 and 1 are refused (``ValueError``): ``weights_only`` loads do not read them.
    `progress`, if given, is called with (bytes written, bytes of the whole stream) once the
    header is built and then as bytes are written, the last time with both equal.
    """
    if 0 <= pickle_protocol < 2:
        raise ValueError(
            f"pickle_protocol {pickle_protocol} is not supported: use 2 (the default) or higher"
        )
    with _files.sink(f, sync=sync, storage_options=storage_options) as out, gc_paused():
        # GC: paused, except while waiting to write
        _save(obj, out, pickle_module, pickle_protocol, progress)


def _save(
    obj: object,
    f: Any,
    pickle_module: Any,
    pickle_protocol: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    collector = _Collector()
    skeleton = _pickling.dumps(obj, pickle_module, pickle_protocol, collector)
    table = _format.pack_storage_table(collector.entries)
    tensors = b"".join(collector.tensors)
    sink = ByteSink(f)
    records = RecordWriter(sink)
    try:
        sink.write(
            _format.pack_preamble(
                len(collector.storages), len(collector.tensors), len(tensors), len(skeleton)
            )
        )
        for part in (table, tensors, skeleton):
            sink.write(part)
        sink.write(_format.pack_checksum(_format.header_checksum(table, tensors, skeleton)))
        if progress is not None:
            n = len(collector.entries)
            total = sink.offset + sum(e[0] for e in collector.entries)
            total += _format.CHECKSUM_SIZE * n + _format.TRAILER_SIZE
            sink.report = lambda done: progress(done, total)
            progress(0, total)
        storages = collector.storages
        for device, run in runs([s.device for s in storages]):
            assert device is not None
            backend_for(device.type).write_many([as_bytes(storages[i]) for i in run], records)
        records.close()
        sink.write(_format.pack_trailer(len(collector.storages), sink.offset))
    except BaseException:
        sink.abort()
        records.close()
        raise
    sink.close()
