"""save, load and their variants: one straight path from objects to records and back."""

from __future__ import annotations

import contextlib
import gc
import pickle
import re
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import torch

from . import _format, _pickling
from ._errors import (
    ChecksumError,
    DeviceError,
    FormatError,
    MismatchError,
    SerializerError,
    TruncatedError,
    UnsupportedError,
)
from ._format import StorageEntry, TensorRef
from ._io import Sink, Source, tensor_memory
from ._registry import as_bytes, backend_for, local_tensor
from ._ring import runs

DEFAULT_PROTOCOL = 2  # torch.serialization.DEFAULT_PROTOCOL, kept for drop-in compatibility
TORCH_STREAM_FIRST_BYTE = b"\x80"  # torch's _streaming_save starts with a pickle PROTO opcode

MapLocation = Union[  # noqa: UP007 (a runtime alias, kept readable)
    None,
    str,
    torch.device,
    Mapping[str, str],
    Callable[[torch.UntypedStorage, str], Any],
]


# ---------------------------------------------------------------------------- gc


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic GC while a stream is processed.

    Tens of thousands of tensors are tracked objects; on Python < 3.12 the collections they
    trigger cost up to a third of a load. Nested and concurrent uses share one pause; the GC
    is re-enabled by the last one out, and only if it was enabled before the first.
    """
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


# ---------------------------------------------------------------------------- save


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
        storage = t.untyped_storage()
        key = storage._cdata
        index = self._index.get(key)
        if index is None:
            index = len(self.storages)
            self._index[key] = index
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
        else:
            first = self.entries[index][1]
            if _format.ITEMSIZE_BY_ID[first] != _format.ITEMSIZE_BY_ID[dtype_id]:
                raise UnsupportedError(
                    f"one storage is viewed as both {_format.DTYPE_TABLE[first][0]} and "
                    f"{_format.DTYPE_TABLE[dtype_id][0]}, which have different element sizes; "
                    f"save a copy (.clone()) of one of them"
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
    if t.device.type not in _format.ID_BY_DEVICE:
        raise UnsupportedError(
            f"tensors on device type {t.device.type!r} are not supported "
            f"(supported: {', '.join(_format.ID_BY_DEVICE)})"
        )
    dtype_id = _format.ID_BY_DTYPE.get(t.dtype)
    if dtype_id is None:
        raise UnsupportedError(f"dtype {t.dtype} is not in the format's dtype table")
    return dtype_id


def save(
    obj: object,
    f: Any,
    pickle_module: Any = pickle,
    pickle_protocol: int = DEFAULT_PROTOCOL,
) -> None:
    """Write `obj` to the binary file-like object or socket `f` as one stream.

    Same arguments as ``torch.distributed._serialization._streaming_save``.
    """
    with _gc_paused():
        _save(obj, f, pickle_module, pickle_protocol)


def _save(obj: object, f: Any, pickle_module: Any, pickle_protocol: int) -> None:
    collector = _Collector()
    skeleton = _pickling.dumps(obj, pickle_module, pickle_protocol, collector)
    table = _format.pack_storage_table(collector.entries)
    tensors = b"".join(collector.tensors)
    sink = Sink(f)
    try:
        sink.write(
            _format.pack_preamble(
                len(collector.storages), len(collector.tensors), len(tensors), len(skeleton)
            )
        )
        for part in (table, tensors, skeleton):
            sink.write(part)
        sink.write(_format.pack_checksum(_format.header_checksum(table, tensors, skeleton)))
        storages = collector.storages
        for device, run in runs([s.device for s in storages]):
            assert device is not None
            backend_for(device.type).write_many([as_bytes(storages[i]) for i in run], sink)
        sink.write(_format.pack_trailer(len(collector.storages), sink.offset))
    except BaseException:
        sink.abort()
        raise
    sink.close()


# ---------------------------------------------------------------------------- header


@dataclass(frozen=True)
class _Header:
    preamble: _format.Preamble
    table: list[StorageEntry]
    tensors: list[TensorRef]
    skeleton: bytes


def _read_header(src: Source, first: bytes) -> _Header:
    pre = _format.unpack_preamble(first + src.read(_format.PREAMBLE_SIZE - 1, "preamble"))
    table_len = pre.storage_count * _format.STORAGE_ENTRY_SIZE
    src.limit = (
        src.offset + table_len + pre.tensor_table_len + pre.skeleton_len + _format.CHECKSUM_SIZE
    )
    table_bytes = src.read(table_len, "storage table")
    tensor_bytes = src.read(pre.tensor_table_len, "tensor table")
    skeleton = src.read(pre.skeleton_len, "skeleton")
    stored = _format.unpack_checksum(src.read(_format.CHECKSUM_SIZE, "checksum of the header"))
    found = _format.header_checksum(table_bytes, tensor_bytes, skeleton)
    if stored != found:
        raise ChecksumError("header", stored, found)
    table = _format.unpack_storage_table(table_bytes)
    tensors = _format.unpack_tensor_table(tensor_bytes, pre.tensor_count, table)
    src.limit = src.offset + _format.data_length(table)
    return _Header(pre, table, tensors, skeleton)


def _ref(header: _Header, pid: Any) -> TensorRef:
    if type(pid) is not int or not 0 <= pid < len(header.tensors):
        raise FormatError(f"skeleton names tensor {pid!r:.100} of {len(header.tensors)}")
    return header.tensors[pid]


def _check_trailer(src: Source, header: _Header) -> None:
    offset = src.offset
    _format.check_trailer(src.read(_format.TRAILER_SIZE, "end marker"), len(header.table), offset)


# ---------------------------------------------------------------------------- placement


def _resolve_device(location: str, map_location: MapLocation) -> torch.device:
    if map_location is None:
        target: Any = location
    elif isinstance(map_location, (str, torch.device)):
        target = map_location
    elif isinstance(map_location, Mapping):
        target = map_location.get(location, location)
    else:
        raise TypeError(f"unsupported map_location {map_location!r}")
    device = torch.device(target)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "Attempting to deserialize object on a CUDA device but "
                "torch.cuda.is_available() is False. If you are running on a CPU-only machine, "
                "please use map_location=torch.device('cpu') to map your storages to the CPU."
            )
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"Attempting to deserialize object on CUDA device {index} but "
                f"torch.cuda.device_count() is {torch.cuda.device_count()}; use map_location"
            )
    elif device.type != "cpu":
        raise DeviceError(f"cannot place storages on device {device}")
    return device


def _apply_callable(
    map_location: Callable[[torch.UntypedStorage, str], Any],
    storage: torch.UntypedStorage,
    location: str,
) -> torch.UntypedStorage:
    result = map_location(storage, location)
    if result is None:
        device = _resolve_device(location, None)
        return as_bytes(storage).to(device).untyped_storage()
    if isinstance(result, torch.storage.TypedStorage):
        result = result._untyped_storage
    if not isinstance(result, torch.UntypedStorage) or result.nbytes() != storage.nbytes():
        raise TypeError(
            f"map_location returned {result!r:.80}, expected a storage of {storage.nbytes()} bytes"
        )
    return result


def _byteswap(data: torch.Tensor, unit: int) -> None:
    if unit > 1 and data.numel():
        rows = data.view(-1, unit)
        rows.copy_(rows.flip(-1))


# ---------------------------------------------------------------------------- data


def _describe(header: _Header, index: int) -> str:
    """Name storage `index` by the keys that use it (only on the error path)."""
    try:
        refs = _walk(_placeholder_skeleton(header, True, pickle, {}), TensorRef)
        keys = [repr(key) for key, ref in refs if ref.storage == index]
    except SerializerError:
        keys = []
    used = f", used by {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" if keys else ""
    return f"storage {index} ({header.table[index].nbytes} bytes{used})"


def _named(header: _Header, e: SerializerError) -> SerializerError:
    """The same error, with the storage it names described by its keys."""
    match = re.match(r"storage (\d+)", getattr(e, "what", ""))
    if match is None or int(match.group(1)) >= len(header.table):
        return e
    index = int(match.group(1))
    what = e.what.replace(match.group(0), _describe(header, index), 1)  # type: ignore[attr-defined]
    if isinstance(e, TruncatedError):
        return TruncatedError(what, e.expected, e.received)
    if isinstance(e, ChecksumError):
        return ChecksumError(what, e.expected, e.found)
    return e


def _read_storages(
    src: Source,
    header: _Header,
    map_location: MapLocation,
    wanted: Collection[int] | None,
) -> list[torch.Tensor | None]:
    """Read every record; keep the wanted ones (all when `wanted` is None), each as a 1-D
    uint8 tensor over its storage."""
    swap = header.preamble.big_endian != _HOST_BIG_ENDIAN
    on_cpu_first = callable(map_location) and not isinstance(map_location, Mapping)
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
                device = resolved[entry.location] = _resolve_device(entry.location, map_location)
            devices.append(device)
    datas: list[torch.Tensor | None] = [None] * len(devices)
    try:
        for device, run in runs(devices):
            if device is None:
                for index in run:
                    src.skip_record(header.table[index].nbytes, f"storage {index}")
                continue
            backend = backend_for(device.type)
            for batch in range(run.start, run.stop, _READ_BATCH):  # bounded bookkeeping
                jobs = []
                for index in range(batch, min(batch + _READ_BATCH, run.stop)):
                    data = backend.empty(header.table[index].nbytes, device)
                    datas[index] = data
                    jobs.append((data, f"storage {index}"))
                backend.read_many(jobs, src)
    except (TruncatedError, ChecksumError) as e:
        raise _named(header, e) from None
    _check_trailer(src, header)
    for index, (entry, loaded) in enumerate(zip(header.table, datas, strict=True)):
        if loaded is None:
            continue
        if swap:
            _byteswap(loaded, _format.swap_unit(entry.dtype_id))
        if on_cpu_first:
            storage = loaded.untyped_storage()
            placed = _apply_callable(map_location, storage, entry.location)  # type: ignore[arg-type]
            datas[index] = as_bytes(placed)
    return datas


_CPU = torch.device("cpu")
_READ_BATCH = 1024  # storages handed to a backend at once
_HOST_BIG_ENDIAN = sys.byteorder == "big"


# ---------------------------------------------------------------------------- skeleton


def _rebuild(ref: TensorRef, data: torch.Tensor | None) -> torch.Tensor:
    """The tensor `ref` describes, as a view of its storage's bytes `data`."""
    dtype = _format.DTYPE_BY_ID.get(ref.dtype_id)
    if dtype is None:
        dtype = _format.dtype_from_id(ref.dtype_id, f"a tensor of storage {ref.storage}")
    if data is None:  # not selected: a data-less stand-in that no code can mistake for data
        t = torch.empty_strided(ref.shape, ref.stride, dtype=dtype, device="meta")
    else:
        t = data.view(dtype).as_strided(ref.shape, ref.stride, ref.offset)
    if ref.kind == _format.PARAMETER:
        return torch.nn.Parameter(t, requires_grad=ref.requires_grad)
    if ref.requires_grad:
        t.requires_grad_(True)
    return t


def _unpickle(
    header: _Header,
    datas: list[torch.Tensor | None],
    weights_only: bool,
    pickle_module: Any,
    pickle_load_args: dict[str, Any],
) -> Any:
    # The header's entries and each storage's bytes are dropped once built (the tensors hold
    # the storages), so that the peak is the result and little more; the header is spent.
    tensors: list[TensorRef | None] = header.tensors  # type: ignore[assignment]
    count = len(tensors)
    built: dict[int, torch.Tensor] = {}
    unbuilt = [0] * len(datas)
    for ref in header.tensors:
        unbuilt[ref.storage] += 1

    def persistent_load(pid: Any) -> torch.Tensor:
        if type(pid) is not int or not 0 <= pid < count:
            raise FormatError(f"skeleton names tensor {pid!r:.100} of {count}")
        t = built.get(pid)
        if t is not None:  # named twice: the same object twice, as pickle's memo would give
            return t
        ref = tensors[pid]
        assert ref is not None  # built ones are answered from `built`
        tensors[pid] = None
        try:
            t = built[pid] = _rebuild(ref, datas[ref.storage])
        except SerializerError:
            raise
        except Exception as e:
            raise FormatError(f"cannot rebuild tensor {pid!r:.200}: {e}") from e
        unbuilt[ref.storage] -= 1
        if not unbuilt[ref.storage]:
            datas[ref.storage] = None
        return t

    try:
        return _pickling.loads(
            header.skeleton,
            persistent_load,
            weights_only=weights_only,
            pickle_module=pickle_module,
            **pickle_load_args,
        )
    except FormatError as e:
        # A backend's rebuild of a tensor subclass raised one of our errors (e.g. a
        # DeviceError: no process group for a DTensor): report it, not a malformed skeleton.
        cause = e.__cause__
        if isinstance(cause, SerializerError) and not isinstance(cause, FormatError):
            raise cause from None
        raise


def _placeholder_skeleton(
    header: _Header,
    weights_only: bool,
    pickle_module: Any,
    pickle_load_args: dict[str, Any],
) -> Any:
    """The skeleton with each tensor left as its `TensorRef` (no data needed)."""
    return _pickling.loads(
        header.skeleton,
        lambda pid: _ref(header, pid),
        weights_only=weights_only,
        pickle_module=pickle_module,
        **pickle_load_args,
    )


def _walk(obj: Any, leaf: type) -> list[tuple[str, Any]]:
    """(dotted key, leaf) for every `leaf` inside mappings, lists, tuples and plain objects."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, leaf):
            found.append((path, value))
            continue
        if id(value) in seen:
            continue
        if isinstance(value, Mapping):
            children: Iterator[tuple[Any, Any]] = iter(value.items())
        elif isinstance(value, (list, tuple)):
            children = enumerate(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            children = iter(vars(value).items())
        else:
            continue
        seen.add(id(value))
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in children]
        stack.extend(reversed(items))
    return found


def _pickle_module_for(pickle_module: Any, weights_only: bool) -> Any:
    if weights_only:
        if pickle_module is not None:
            raise RuntimeError(
                "Can not safely load weights when explicit pickle_module is specified"
            )
        return None
    return pickle if pickle_module is None else pickle_module


# ---------------------------------------------------------------------------- load


def load(
    f: Any,
    map_location: MapLocation = None,
    pickle_module: Any = None,
    *,
    weights_only: bool = True,
    **pickle_load_args: Any,
) -> Any:
    """Read one stream from `f` and return the object; consumes exactly that stream.

    Same arguments and semantics as ``torch.distributed._serialization._streaming_load``;
    also reads streams written by that function.
    """
    pickle_module = _pickle_module_for(pickle_module, weights_only)
    src = Source(f)
    with _gc_paused(), contextlib.closing(src):
        first = src.read(1, "magic")
        if first == TORCH_STREAM_FIRST_BYTE:
            from ._torch_compat import load_torch_stream

            return load_torch_stream(
                first, src, map_location, pickle_module, weights_only, pickle_load_args
            )
        header = _read_header(src, first)
        storages = _read_storages(src, header, map_location, None)
        return _unpickle(header, storages, weights_only, pickle_module, pickle_load_args)


def load_keys(
    f: Any,
    keys: Collection[Any],
    map_location: MapLocation = None,
    pickle_module: Any = None,
    *,
    weights_only: bool = True,
    **pickle_load_args: Any,
) -> dict[Any, Any]:
    """Load only `keys` of a stream whose object is a mapping (a state dict).

    The data of every other tensor is read past (and verified) without being kept.
    """
    pickle_module = _pickle_module_for(pickle_module, weights_only)
    src = Source(f)
    with _gc_paused(), contextlib.closing(src):
        header = _read_header(src, src.read(1, "magic"))
        outline = _placeholder_skeleton(header, weights_only, pickle_module, pickle_load_args)
        if not isinstance(outline, Mapping):
            raise MismatchError(
                f"load_keys needs a stream holding a mapping, found {type(outline).__name__}"
            )
        missing = [k for k in keys if k not in outline]
        if missing:
            raise MismatchError(f"keys not in the stream: {missing!r:.500}")
        wanted = {ref.storage for k in keys for _, ref in _walk(outline[k], TensorRef)}
        storages = _read_storages(src, header, map_location, wanted)
        obj = _unpickle(header, storages, weights_only, pickle_module, pickle_load_args)
        return {k: obj[k] for k in keys}


class LoadResult(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """A 1-D uint8 view of the bytes of a contiguous tensor."""
    flat = t.detach().reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def load_into(state_dict: Mapping[str, Any], f: Any, *, strict: bool = True) -> LoadResult:
    """Load a stream of tensors in place into the tensors of `state_dict`.

    Keys are matched by dotted path; shapes and dtypes must agree. A stream storage that
    maps one-to-one onto a contiguous destination is read straight into it; others are
    read once and copied into each destination that views them.
    """
    src = Source(f)
    with _gc_paused(), contextlib.closing(src):
        header = _read_header(src, src.read(1, "magic"))
        outline = _placeholder_skeleton(header, True, None, {})
        stream = dict(_walk(outline, TensorRef))
        dest = {key: local_tensor(t) for key, t in _walk(state_dict, torch.Tensor)}
        missing = sorted(dest.keys() - stream.keys())
        unexpected = sorted(stream.keys() - dest.keys())
        if strict and (missing or unexpected):
            raise MismatchError(
                f"keys differ: missing from the stream {missing!r:.300}, "
                f"not in the destination {unexpected!r:.300}"
            )
        problems = []
        plan: dict[int, list[tuple[TensorRef, torch.Tensor]]] = {}
        for key, ref in stream.items():
            target = dest.get(key)
            if target is None:
                continue
            dtype = _format.DTYPE_BY_ID.get(ref.dtype_id)
            if dtype is None:
                dtype = _format.dtype_from_id(ref.dtype_id, f"tensor {key!r}")
            if target.dtype != dtype or target.shape != ref.shape:
                problems.append(
                    f"{key!r}: stream has {dtype} {list(ref.shape)}, "
                    f"destination has {target.dtype} {list(target.shape)}"
                )
            plan.setdefault(ref.storage, []).append((ref, target))
        if problems:
            raise MismatchError("cannot load in place:\n  " + "\n  ".join(problems))
        swap = header.preamble.big_endian != _HOST_BIG_ENDIAN
        with torch.no_grad():
            for index, entry in enumerate(header.table):
                users = plan.get(index)
                try:
                    if not users:
                        src.skip_record(entry.nbytes, f"storage {index}")
                        continue
                    _fill(index, entry, users, src, swap)
                except (TruncatedError, ChecksumError) as e:
                    raise _named(header, e) from None
        _check_trailer(src, header)
        return LoadResult(missing, unexpected)


# Writes through raw memory bypass autograd's version counter: bump it (torch >= 2.1), so that
# a tensor saved for backward and then loaded into fails loudly instead of silently.
_increment_version = getattr(torch.autograd.graph, "increment_version", None)


def _takes_raw_bytes(t: torch.Tensor) -> bool:
    """Whether the stream's bytes can go straight into `t`'s memory: contiguous, and no lazy
    conjugate or negative bit (whose memory holds other values than `t` reads as)."""
    return t.is_contiguous() and not t.is_conj() and not t.is_neg()


def _fill(
    index: int,
    entry: StorageEntry,
    users: list[tuple[TensorRef, torch.Tensor]],
    src: Source,
    swap: bool,
) -> None:
    if len(users) == 1 and not swap:  # fast path: one CPU tensor that is the whole storage
        ref, target = users[0]
        if (
            target.is_cpu
            and ref.offset == 0
            and ref.stride == target.stride()
            and _takes_raw_bytes(target)
            and target.nbytes == entry.nbytes
        ):
            src.read_record(tensor_memory(target), f"storage {index}")
            if _increment_version is not None:
                _increment_version(target)
            return
    direct = None
    for ref, target in users:
        if (
            ref.offset == 0
            and _is_contiguous(ref.shape, ref.stride)
            and target.numel() * target.element_size() == entry.nbytes
            and _takes_raw_bytes(target)
        ):
            direct = target
            break
    if direct is not None:
        data = _bytes_of(direct)
        backend_for(direct.device.type).read_many([(data, f"storage {index}")], src)
        base, base_offset = direct.untyped_storage(), direct.storage_offset()
        if _increment_version is not None:
            _increment_version(direct)
    else:
        device = users[0][1].device
        backend = backend_for(device.type)
        data = backend.empty(entry.nbytes, device)
        backend.read_many([(data, f"storage {index}")], src)
        base, base_offset = data.untyped_storage(), 0
    if swap:
        _byteswap(data, _format.swap_unit(entry.dtype_id))
    for ref, target in users:
        if target is direct:
            continue
        view = torch.empty(0, dtype=target.dtype, device=base.device).set_(
            base, base_offset + ref.offset, ref.shape, ref.stride
        )
        target.copy_(view)


# ---------------------------------------------------------------------------- index


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


def read_index(f: Any, *, weights_only: bool = True, pickle_module: Any = None) -> StreamIndex:
    """List a stream's tensors without loading their data, and consume the stream.

    A seekable file is skipped over; any other stream is read through and its records
    verified.
    """
    pickle_module = _pickle_module_for(pickle_module, weights_only)
    src = Source(f)
    with _gc_paused(), contextlib.closing(src):
        start = src.offset
        header = _read_header(src, src.read(1, "magic"))
        outline = _placeholder_skeleton(header, weights_only, pickle_module, {})
        tensors = []
        for key, ref in _walk(outline, TensorRef):
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
        records = _format.data_length(header.table) - _format.TRAILER_SIZE
        if not src.skip(records):
            for index, entry in enumerate(header.table):
                src.skip_record(entry.nbytes, f"storage {index}")
        _check_trailer(src, header)
        pre = header.preamble
        return StreamIndex((pre.major, pre.minor), tensors, header.table, src.offset - start)
