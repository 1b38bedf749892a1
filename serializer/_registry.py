"""What the core asks of device backends and tensor-subclass codecs, and where it finds them.

- A **backend** moves a storage's bytes between device memory and records, and decides where
  storages of its device type may be placed. There is one per device type of the format's
  device table (`_format.DEVICE_TABLE`), in the module `serializer.backends.<device type>`
  (as `BACKEND`), imported on first use: adding a device type is one backend file and one
  table entry, and a consumer may ship only the backends it uses.
- A **codec** saves a tensor subclass (DTensor) as a pickle reduction to a global it allows
  under ``weights_only``. Codecs register with `register_codec`; the modules of the codecs
  this package ships (`CODEC_MODULES`) are imported on first need, so that saving a DTensor,
  or loading a stream that names its rebuild function, needs no import by the caller.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from . import _format
from ._errors import UnsupportedError
from ._records import RecordReader, RecordWriter

_BACKEND_PACKAGE = "serializer.backends"
_backends: dict[str, Backend] = {}


class Backend(Protocol):
    """Moves storage bytes between one device type's memory and a stream.

    `data` is always a 1-D contiguous uint8 tensor on the backend's device: the bytes of one
    storage (or of one destination tensor, for in-place loads).
    """

    def place(self, device: torch.device) -> torch.device:
        """The device a storage that `map_location` sends to `device` loads onto (e.g. an
        index for a bare ``cuda``), or `DeviceError` where this process cannot hold it."""

    def write_many(self, datas: Sequence[torch.Tensor], records: RecordWriter) -> None:
        """Write each of `datas` (all on one device) as one record: payload, then checksum."""

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """Allocate (uninitialized) destination bytes on `device`."""

    def read_many(self, jobs: Sequence[tuple[torch.Tensor, int]], records: RecordReader) -> None:
        """Fill each job's tensor (all on one device) from the record of the storage whose
        index it gives, verifying its checksum."""


def find_backend(device_type: str) -> Backend | None:
    """The backend of `device_type`, or None if the format has no such device type."""
    backend = _backends.get(device_type)
    if backend is None:
        if device_type not in _format.ID_BY_DEVICE:
            return None
        module = importlib.import_module(f"{_BACKEND_PACKAGE}.{device_type}")
        backend = _backends[device_type] = module.BACKEND
    return backend


def backend_for(device_type: str) -> Backend:
    """The backend that saves tensors on `device_type`, or `UnsupportedError`."""
    backend = find_backend(device_type)
    if backend is None:
        raise UnsupportedError(
            f"tensors on device type {device_type!r} are not supported "
            f"(supported: {', '.join(_format.ID_BY_DEVICE)}); move them to the CPU first"
        )
    return backend


def as_bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    """A 1-D uint8 tensor over all bytes of `storage`."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class TensorCodec(Protocol):
    """Saves and loads one kind of tensor subclass.

    `save` pickles an instance as ``reduce(obj)``, a call of a global that `safe_globals`
    lists (by the full name streams carry: permanent) with arguments made of tensors and
    primitives. When a stream is read without its data (`read_index`, `load_keys`,
    `load_into`), that global receives a `serializer.TensorRef` in place of each tensor and
    must return it unchanged.
    """

    @property
    def safe_globals(self) -> Mapping[str, Any]:
        """What weights_only loads may call, by full name ("module.name")."""

    def handles(self, cls: type) -> bool:
        """Whether this codec saves instances of `cls`."""

    def reduce(self, obj: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The pickle reduction of `obj`."""

    def local_tensor(self, obj: Any) -> torch.Tensor:
        """The plain tensor holding this process's data of `obj`, which in-place loads fill."""


# The codecs this package ships, by module: each registers its codec when imported.
CODEC_MODULES = ("serializer.distributed.dtensor",)
_codecs: list[TensorCodec] = []
_codec_lock = threading.Lock()
_codec_modules_loaded = False
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def register_codec(codec: TensorCodec) -> None:
    """Make `codec` save the tensor subclasses it handles and allow its globals."""
    with _codec_lock:
        if codec not in _codecs:
            _codecs.append(codec)


def _all_codecs() -> list[TensorCodec]:
    global _codec_modules_loaded
    if not _codec_modules_loaded:
        for module in CODEC_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:  # not shipped (a Bazel consumer of the core alone)
                if e.name is None or not module.startswith(e.name):
                    raise
        _codec_modules_loaded = True
    return _codecs


def codec_for(cls: type) -> TensorCodec | None:
    """The codec that saves tensor subclass `cls`, or None (also for plain tensors)."""
    if cls in _PLAIN:
        return None
    for codec in _all_codecs():
        if codec.handles(cls):
            return codec
    return None


def codec_global(full_name: str) -> Any | None:
    """A global named `module.name` that a codec allows in weights_only loads, or None."""
    for codec in _all_codecs():
        found = codec.safe_globals.get(full_name)
        if found is not None:
            return found
    return None


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor holding this process's data of `t`, which in-place loads fill: `t`
    itself, or for a subclass a codec knows, what its `local_tensor` gives (a DTensor's
    local shard)."""
    codec = codec_for(type(t))
    return t if codec is None else codec.local_tensor(t)
