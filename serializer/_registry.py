"""Maps a device type to the backend that moves its bytes. Backends are imported on demand,
so the core never imports one, and a consumer may ship only the backends it uses."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ._errors import UnsupportedError
from ._io import Sink, Source

_MODULES = {
    "cpu": "serializer.backends.cpu",
    "cuda": "serializer.backends.cuda",
}
_loaded: dict[str, Backend] = {}

# Tensor subclasses a backend knows how to save, by class name (the class must come from
# torch). The module provides `reduce_tensor(obj) -> (callable, args)`, a pickle reduction
# whose callable it lists in `SAFE_GLOBALS` so that weights_only loads may call it.
_SUBCLASS_MODULES = {
    "DTensor": "serializer.backends.distributed",
}
_BACKEND_PACKAGE = "serializer.backends."


class Backend(Protocol):
    """Moves storage bytes between device memory and a stream.

    `data` is always a 1-D contiguous uint8 tensor on the backend's device: the bytes of one
    storage (or of one destination tensor, for in-place loads).
    """

    def write_many(self, datas: Sequence[torch.Tensor], sink: Sink) -> None:
        """Write each of `datas` (all on one device) as one record: payload, then checksum."""

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """Allocate (uninitialized) destination bytes on `device`."""

    def read_many(self, jobs: Sequence[tuple[torch.Tensor, str]], source: Source) -> None:
        """Fill each job's tensor (all on one device) from one record, verifying its checksum;
        the string names the record in errors."""


def backend_for(device_type: str) -> Backend:
    backend = _loaded.get(device_type)
    if backend is None:
        module = _MODULES.get(device_type)
        if module is None:
            raise UnsupportedError(
                f"tensors on device type {device_type!r} are not supported "
                f"(supported: {', '.join(sorted(_MODULES))}); move them to the CPU first"
            )
        backend = importlib.import_module(module).BACKEND
        _loaded[device_type] = backend
    return backend


def as_bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    """A 1-D uint8 tensor over all bytes of `storage`."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def subclass_reducer(cls: type) -> Callable[[Any], Any] | None:
    """The reduction a backend provides for tensor subclass `cls`, or None."""
    module = _SUBCLASS_MODULES.get(cls.__name__)
    if module is None or not cls.__module__.startswith("torch."):
        return None
    reducer: Callable[[Any], Any] = importlib.import_module(module).reduce_tensor
    return reducer


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor holding this process's data of `t`, which in-place loads fill: `t`
    itself, or for a subclass a backend knows (`local_tensor(obj)` of its module, e.g. a
    DTensor's local shard)."""
    cls = type(t)
    if cls is torch.Tensor or cls is torch.nn.Parameter:
        return t
    module = _SUBCLASS_MODULES.get(cls.__name__)
    if module is None or not cls.__module__.startswith("torch."):
        return t
    unwrap = getattr(importlib.import_module(module), "local_tensor", None)
    return t if unwrap is None else unwrap(t)


def backend_global(full_name: str) -> Any | None:
    """A global named `module.name` that a backend module allows in weights_only loads."""
    module, _, name = full_name.rpartition(".")
    if not module.startswith(_BACKEND_PACKAGE) or module not in _SUBCLASS_MODULES.values():
        return None
    allowed: dict[str, Any] = getattr(importlib.import_module(module), "SAFE_GLOBALS", {})
    return allowed.get(name)
