"""DTensors in serializer streams: the codec that saves a DTensor as its local shard plus a
spec of primitives, and rebuilds it on load.

`serializer.save` writes a DTensor as its local shard (an ordinary tensor record) plus a
description of its spec made of primitives only: the device mesh (device type, ranks, dim
names, and how a sliced mesh was cut from its root), the placements, the global shape and
stride, `requires_grad`, and the rank and world size that saved it. No torch class is
pickled, so a stream written by one torch version loads on another, and `weights_only`
loads need nothing but the rebuild function, which the codec allows. docs/FORMAT.md specifies
the record. Loading rebuilds the DTensor on a device mesh of the current default process
group: the stream loads only where the world has the same size and this rank holds the same
shard (mesh coordinate) as the rank that saved it, and `TopologyError` says why not
otherwise. `local_shards()` loads DTensors as their plain local shards, with no process group.

Streams name the rebuild function `serializer.backends.distributed._rebuild_dtensor` (where
it lived first): that name is permanent, kept by an alias module. Feature detection only: no
torch version is checked.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

import serializer
from serializer import FormatError, SerializerError, TensorRef, UnsupportedError

from ._dtensor_spec import SPEC_VERSION, check_meta, decode_placement, encode_placement, torch_api
from ._mesh import TopologyError, check_position, describe_mesh, mesh_for, world_for

__all__ = ["CODEC", "TopologyError", "local_shards"]

# The name streams carry for `_rebuild_dtensor` (permanent: see docs/FORMAT.md).
REBUILD_NAME = "serializer.backends.distributed._rebuild_dtensor"


def reduce_tensor(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """The pickle reduction of a DTensor: its local shard and a spec of primitives."""
    spec = obj._spec
    local = getattr(obj, "_local_tensor", None)
    if local is None:
        local = obj.to_local()
    meta_ = spec.tensor_meta
    shape = tuple(meta_.shape) if meta_ is not None else tuple(obj.shape)
    stride = tuple(meta_.stride) if meta_ is not None else tuple(obj.stride())
    coordinate = spec.mesh.get_coordinate()
    initialized = dist.is_available() and dist.is_initialized()
    meta: dict[str, Any] = {
        "version": SPEC_VERSION,
        "mesh": describe_mesh(spec.mesh),
        "placements": tuple(encode_placement(p) for p in spec.placements),
        "shape": tuple(int(n) for n in shape),
        "stride": tuple(int(s) for s in stride),
        "requires_grad": bool(obj.requires_grad),
        "parameter": isinstance(obj, torch.nn.Parameter),
        "rank": dist.get_rank() if initialized else None,
        "world_size": dist.get_world_size() if initialized else None,
        "coordinate": None if coordinate is None else tuple(int(c) for c in coordinate),
    }
    shard_order = getattr(spec, "shard_order", None)
    if shard_order is not None:
        meta["shard_order"] = tuple(
            (int(entry[0]), tuple(int(d) for d in entry[1])) for entry in shard_order
        )
    strided_as_order = getattr(spec, "use_strided_shard_as_shard_order", None)
    if strided_as_order is not None:
        meta["strided_shard_as_shard_order"] = bool(strided_as_order)
    return (_rebuild_dtensor, (local.detach(), meta))


_state = threading.local()


@contextlib.contextmanager
def local_shards() -> Iterator[None]:
    """Inside this block (in this thread), loads return each DTensor of a stream as its
    plain local shard, and need no process group: for inspecting a rank's stream anywhere."""
    previous = getattr(_state, "local_shards", False)
    _state.local_shards = True
    try:
        yield
    finally:
        _state.local_shards = previous


def _rebuild_dtensor(local: Any, meta: Any) -> Any:
    """Called by the skeleton's unpickler (the only global this module allows)."""
    if isinstance(local, TensorRef):  # an outline (read_index, load_keys, load_into)
        return local
    if not isinstance(local, torch.Tensor):
        raise FormatError(f"a DTensor's local shard is a {type(local).__name__}, not a tensor")
    check_meta(meta)
    if getattr(_state, "local_shards", False) or local.is_meta:
        return local  # is_meta: a tensor load_keys did not select (dropped afterwards)
    api = torch_api()
    group = world_for(meta)
    desc = meta["mesh"]
    device_type = desc["device_type"]
    if local.device.type != device_type:
        device_type = local.device.type  # map_location moved the shard: the mesh follows
    mesh = mesh_for(meta, device_type, group)
    shape = meta["shape"]
    placements = meta["placements"]
    check_position(mesh, meta, placements)
    decoded = tuple(decode_placement(p, len(shape)) for p in placements)
    tensor_meta = api.TensorMeta(torch.Size(shape), tuple(meta["stride"]), local.dtype)
    kwargs: dict[str, Any] = {"tensor_meta": tensor_meta}
    order = meta.get("shard_order")
    if "use_strided_shard_as_shard_order" in api.spec_fields:
        kwargs["use_strided_shard_as_shard_order"] = meta.get("strided_shard_as_shard_order")
    if order is not None:
        if "shard_order" in api.spec_fields:
            entry = api.ShardOrderEntry or (lambda d, m: (d, m))
            kwargs["shard_order"] = tuple(entry(d, m) for d, m in order)
        elif any(list(m) != sorted(m) for _, m in order):
            raise UnsupportedError(
                f"the stream holds a DTensor sharded in a non-default order {order!r}, which "
                f"torch {torch.__version__} cannot represent"
            )
    try:
        spec = api.DTensorSpec(mesh, decoded, **kwargs)
        result = api.DTensor(local, spec, requires_grad=meta["requires_grad"])
        if meta["parameter"]:
            result = torch.nn.Parameter(result, requires_grad=meta["requires_grad"])
    except SerializerError:
        raise
    except Exception as e:
        raise FormatError(
            f"cannot rebuild a DTensor from the stream: {type(e).__name__}: {e}"
        ) from e
    return result


# Pickle writes a function by its module and name: streams keep naming the permanent one.
_rebuild_dtensor.__module__ = REBUILD_NAME.rpartition(".")[0]


class DTensorCodec:
    """How `serializer` saves and loads DTensors (`serializer.TensorCodec`)."""

    safe_globals: dict[str, Any] = {REBUILD_NAME: _rebuild_dtensor}

    def handles(self, cls: type) -> bool:
        return cls.__name__ == "DTensor" and cls.__module__.startswith("torch.")

    def reduce(self, obj: Any) -> tuple[Any, tuple[Any, ...]]:
        return reduce_tensor(obj)

    def local_tensor(self, obj: Any) -> torch.Tensor:
        """The plain tensor that holds this rank's part of DTensor `obj` (in-place loads
        write into it)."""
        local: torch.Tensor | None = getattr(obj, "_local_tensor", None)
        if local is None:
            local = obj.to_local()
        assert local is not None
        return local


CODEC = DTensorCodec()
serializer.register_codec(CODEC)
