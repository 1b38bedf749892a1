"""map_location: where each storage of a stream loads. Which devices exist and how a storage
is placed on one is each backend's to say (`Backend.place`); this module applies the
caller's mapping, as `torch.load` does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch

from ._errors import DeviceError
from ._registry import as_bytes, find_backend

MapLocation = Union[  # noqa: UP007 (a runtime alias, kept readable)
    None,
    str,
    torch.device,
    Mapping[str, str],
    Callable[[torch.UntypedStorage, str], Any],
]


def maps_on_cpu_first(map_location: MapLocation) -> bool:
    """Whether storages load on the CPU and then go through the caller's callable."""
    return callable(map_location) and not isinstance(map_location, Mapping)


def resolve_device(location: str, map_location: MapLocation) -> torch.device:
    """The device a storage saved at `location` loads onto (a non-callable map_location)."""
    if map_location is None:
        target: Any = location
    elif isinstance(map_location, (str, torch.device)):
        target = map_location
    elif isinstance(map_location, Mapping):
        target = map_location.get(location, location)
    else:
        raise TypeError(f"unsupported map_location {map_location!r}")
    device = torch.device(target)
    backend = find_backend(device.type)
    if backend is None:
        raise DeviceError(f"cannot place storages on device {device}")
    return backend.place(device)


def apply_callable(
    map_location: Callable[[torch.UntypedStorage, str], Any],
    storage: torch.UntypedStorage,
    location: str,
) -> torch.UntypedStorage:
    """What a map_location callable makes of a storage loaded on the CPU (None: its saved
    location)."""
    result = map_location(storage, location)
    if result is None:
        device = resolve_device(location, None)
        return as_bytes(storage).to(device).untyped_storage()
    if isinstance(result, torch.storage.TypedStorage):
        result = result._untyped_storage
    if not isinstance(result, torch.UntypedStorage) or result.nbytes() != storage.nbytes():
        raise TypeError(
            f"map_location returned {result!r:.80}, expected a storage of {storage.nbytes()} bytes"
        )
    return result


def place_bytes(data: torch.Tensor, location: str, map_location: MapLocation) -> torch.Tensor:
    """CPU bytes of a storage saved at `location` (or part of one), where `map_location`
    puts them: through its callable, or copied to a device that is not the CPU."""
    if maps_on_cpu_first(map_location):
        return as_bytes(apply_callable(map_location, data.untyped_storage(), location))  # type: ignore[arg-type]
    device = resolve_device(location, map_location)
    return data if device.type == "cpu" else data.to(device)
