"""The distributed backend: DTensors, resharding checkpoints, transfer over process groups.

- **DTensor** (`torch.distributed.tensor.DTensor`, `torch.distributed._tensor` on torch 2.4):
  `serializer.save` writes a DTensor as its local shard (an ordinary tensor record) plus a
  description of its spec made of primitives only: the device mesh (device type, ranks, dim
  names, and how a sliced mesh was cut from its root), the placements, the global shape and
  stride, `requires_grad`, and the rank and world size that saved it. No torch class is
  pickled, so a stream written by one torch version loads on another, and `weights_only`
  loads need nothing but `_rebuild_dtensor`, which this module allows (`SAFE_GLOBALS`).
  Loading rebuilds the DTensor on a device mesh of the current default process group: the
  stream loads only where the world has the same size and this rank holds the same shard
  (mesh coordinate) as the rank that saved it, and `TopologyError` says why not otherwise.
  `local_shards()` loads DTensors as their plain local shards, with no process group.
- **Resharding checkpoints** (`distributed_checkpoint.py`): `SerializerStorageWriter` /
  `SerializerStorageReader`, a `torch.distributed.checkpoint` storage layer in this format.
- **Transfer** (`distributed_transfer.py`): `send_state_dict` / `recv_state_dict` /
  `recv_state_dict_into`, one stream between two ranks of a process group in bounded chunks.

This module holds the DTensor part (its `_rebuild_dtensor` is the name streams record) and
exports the other two. docs/DISTRIBUTED.md has examples. Feature detection only: no torch
version is checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import itertools
import threading
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from serializer._errors import DeviceError, FormatError, SerializerError, UnsupportedError
from serializer._format import TensorRef

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "SAFE_GLOBALS",
    "TopologyError",
    "TransferError",
    "local_shards",
    "local_tensor",
    "recv_state_dict",
    "recv_state_dict_into",
    "reduce_tensor",
    "send_state_dict",
]

SPEC_VERSION = 1  # of the dict that describes a DTensor's spec in the skeleton


class TopologyError(DeviceError):
    """A DTensor of the stream cannot be placed on this process's world: no default process
    group, another world size, or this rank does not hold the shard the stream holds."""


# ---------------------------------------------------------------------------- torch's DTensor


@functools.cache
def _api() -> SimpleNamespace:
    """DTensor's classes in the running torch, found by feature detection.

    torch >= 2.5: `torch.distributed.tensor` (spec in `._dtensor_spec`); torch 2.4:
    `torch.distributed._tensor` (spec and placements in `.placement_types`, where there is no
    `_StridedShard`). `Partial` was `_Partial` before 2.4 and still has that alias.
    """
    if not dist.is_available():
        raise UnsupportedError("DTensors need torch.distributed, which this torch build lacks")
    package = None
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "DTensor"):
            package = name
            dtensor = module.DTensor
            break
    if package is None:
        raise UnsupportedError(f"this torch ({torch.__version__}) has no DTensor")
    placements = importlib.import_module(f"{package}.placement_types")
    try:
        spec_module = importlib.import_module(f"{package}._dtensor_spec")
    except ImportError:
        spec_module = placements
    spec_cls = spec_module.DTensorSpec
    partial = getattr(placements, "Partial", None) or placements._Partial
    from torch.distributed import device_mesh

    if dataclasses.is_dataclass(spec_cls):
        fields = {f.name for f in dataclasses.fields(spec_cls)}
    else:
        fields = set(inspect.signature(spec_cls).parameters)
    return SimpleNamespace(
        DTensor=dtensor,
        DTensorSpec=spec_cls,
        TensorMeta=spec_module.TensorMeta,
        ShardOrderEntry=getattr(spec_module, "ShardOrderEntry", None),
        spec_fields=fields,
        Shard=placements.Shard,
        StridedShard=getattr(placements, "_StridedShard", None),
        Replicate=placements.Replicate,
        Partial=partial,
        partial_op_is_str=isinstance(partial().reduce_op, str),
        DeviceMesh=device_mesh.DeviceMesh,
        mesh_resources=getattr(device_mesh, "_mesh_resources", None),
    )


def _reduce_op_name(op: Any) -> str:
    if isinstance(op, str):
        return op
    name = getattr(op, "name", None) or str(op)  # a c10d ReduceOp / RedOpType
    return str(name).rsplit(".", 1)[-1].lower()


def _encode_placement(p: Any) -> tuple[Any, ...]:
    name = type(p).__name__
    if type(p).__module__.startswith("torch."):
        if name == "Replicate":
            return ("replicate",)
        if name == "Shard":
            return ("shard", int(p.dim))
        if name == "_StridedShard":
            return ("strided_shard", int(p.dim), int(p.split_factor))
        if name in ("Partial", "_Partial"):
            return ("partial", _reduce_op_name(p.reduce_op))
    raise UnsupportedError(
        f"DTensor placement {p!r} is not supported (supported: Shard, Replicate, Partial, "
        f"_StridedShard); redistribute the DTensor first"
    )


def _decode_placement(entry: tuple[Any, ...], ndim: int) -> Any:
    api = _api()
    kind = entry[0] if entry else None
    if kind == "replicate" and len(entry) == 1:
        return api.Replicate()
    if kind in ("shard", "strided_shard") and len(entry) == (2 if kind == "shard" else 3):
        dim = entry[1]
        if not _is_int(dim) or not -ndim <= dim < ndim:
            raise FormatError(f"DTensor placement {entry!r:.100} shards a dim the tensor lacks")
        if kind == "shard":
            return api.Shard(dim)
        if not _is_int(entry[2]) or entry[2] < 1:
            raise FormatError(f"DTensor placement {entry!r:.100} is malformed")
        if api.StridedShard is None:
            raise UnsupportedError(
                f"the stream holds a DTensor with a _StridedShard placement, which torch "
                f"{torch.__version__} lacks"
            )
        return api.StridedShard(dim, split_factor=entry[2])
    if kind == "partial" and len(entry) == 2 and isinstance(entry[1], str):
        op = entry[1]
        if api.partial_op_is_str:
            return api.Partial(op)
        red = getattr(dist.ReduceOp, op.upper(), None)
        if red is None:
            raise UnsupportedError(f"reduce op {op!r} of a Partial placement is not supported")
        return api.Partial(red)
    raise FormatError(f"unknown DTensor placement {entry!r:.100}")


# ---------------------------------------------------------------------------- device meshes


def _root_of(mesh: Any) -> Any:
    """The mesh `mesh` was sliced from (itself if it was not), across torch versions."""
    getter = getattr(mesh, "_get_root_mesh", None)  # torch >= 2.9 or so
    if callable(getter):
        root = getter()
    else:
        resources = _api().mesh_resources
        find = getattr(resources, "get_root_mesh", None) or getattr(
            resources, "get_parent_mesh", None
        )  # 2.5-2.8: get_root_mesh; 2.4: get_parent_mesh (None for a root)
        root = find(mesh) if find is not None else None
    return mesh if root is None else root


def _ranks(mesh: Any) -> list[Any]:
    ranks: list[Any] = mesh.mesh.tolist()
    return ranks


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _along(ranks: torch.Tensor, coordinate: list[int], dims: tuple[int, ...]) -> list[int]:
    """The ranks met from `coordinate` moving along `dims` (in that order), flattened."""
    index = tuple(slice(None) if d in dims else c for d, c in enumerate(coordinate))
    view = ranks[index]  # the kept dims, in increasing order
    kept = sorted(dims)
    group: list[int] = view.permute(*[kept.index(d) for d in dims]).reshape(-1).tolist()
    return group


def _slice_path(root: Any, mesh: Any) -> tuple[Any, ...]:
    """How `mesh` is cut from `root`: one entry per dim of `mesh`, a root dim name or, for a
    flattened dim, (its name, the root dim names it flattens)."""
    names = mesh.mesh_dim_names
    root_names = root.mesh_dim_names or ()
    if not names:
        raise UnsupportedError(f"cannot save a DTensor on {mesh!r}: a sliced mesh without names")
    root_ranks = root.mesh
    root_coord = root.get_coordinate()
    coord = mesh.get_coordinate()
    path: list[Any] = []
    for i, name in enumerate(names):
        if name in root_names:
            path.append(name)
            continue
        found = None
        if root_coord is not None and coord is not None:
            group = _along(mesh.mesh, list(coord), (i,))
            ndim = root_ranks.dim()
            for dims in _ordered_subsets(ndim):
                if _along(root_ranks, list(root_coord), dims) == group:
                    found = (name, tuple(root_names[d] for d in dims))
                    break
        if found is None:
            raise UnsupportedError(
                f"cannot save a DTensor on {mesh!r}: its dim {name!r} is not a dim of the mesh "
                f"it was sliced from ({root!r}), nor a flattening of some of them"
            )
        path.append(found)
    return tuple(path)


def _ordered_subsets(ndim: int) -> Iterator[tuple[int, ...]]:
    for size in range(2, ndim + 1):
        yield from itertools.combinations(range(ndim), size)


# Descriptions by mesh (by id, while the mesh lives): computed once per mesh, and one dict
# object shared by all its DTensors, which the skeleton's pickle memo then writes once.
_descriptions: dict[int, tuple[Any, dict[str, Any]]] = {}


def _describe_mesh(mesh: Any) -> dict[str, Any]:
    key = id(mesh)
    entry = _descriptions.get(key)
    if entry is not None and entry[0]() is mesh:
        return entry[1]
    desc = _describe_new_mesh(mesh)
    ref = weakref.ref(mesh, lambda _: _descriptions.pop(key, None))
    _descriptions[key] = (ref, desc)
    return desc


def _describe_new_mesh(mesh: Any) -> dict[str, Any]:
    root = _root_of(mesh)
    desc: dict[str, Any] = {
        "device_type": str(mesh.device_type),
        "ranks": _ranks(mesh),
        "dim_names": tuple(mesh.mesh_dim_names) if mesh.mesh_dim_names else None,
    }
    if root is not mesh:
        desc["root_ranks"] = _ranks(root)
        desc["root_dim_names"] = tuple(root.mesh_dim_names) if root.mesh_dim_names else None
        desc["slice"] = _slice_path(root, mesh)
    _remember_mesh(root)
    return desc


# Meshes of the current default process group, by (device type, ranks, dim names): those
# seen by `save` and those `load` built, so a state dict's DTensors share one mesh and its
# process groups are made once. Weak: a mesh lives as long as the DTensors that use it.
_meshes_lock = threading.Lock()
_meshes: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def _default_group() -> Any | None:
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.distributed_c10d._get_default_group()


def _ref(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:  # a ProcessGroup of a torch whose bindings lack weak references
        return lambda: obj


def _mesh_key(device_type: str, ranks: Any, names: Any) -> tuple[Any, ...]:
    return (device_type, _freeze(ranks), tuple(names) if names else None)


def _remember_mesh(root: Any) -> None:
    group = _default_group()
    if group is None:
        return
    key = _mesh_key(str(root.device_type), _ranks(root), root.mesh_dim_names)
    with _meshes_lock:
        _meshes[key] = (_ref(group), weakref.ref(root))


def _cached_mesh(key: tuple[Any, ...], group: Any) -> Any | None:
    with _meshes_lock:
        entry = _meshes.get(key)
        if entry is None:
            return None
        group_ref, mesh_ref = entry
        mesh = mesh_ref()
        if mesh is None or group_ref() is not group:
            del _meshes[key]
            return None
        return mesh


def _world_for(meta: dict[str, Any]) -> Any:
    """The default group, checked against the world the stream was saved in."""
    group = _default_group()
    if group is None:
        raise TopologyError(
            "loading a DTensor needs an initialized default process group "
            "(torch.distributed.init_process_group) with the world it was saved in"
            + _saved_in(meta)
            + "; or load its local shard as a plain tensor inside "
            "`with serializer.backends.distributed.local_shards():`"
        )
    world = dist.get_world_size()
    if meta.get("world_size") is not None and meta["world_size"] != world:
        raise TopologyError(
            f"the stream's DTensor was saved in a world of {meta['world_size']} ranks and "
            f"cannot load in this world of {world}: a rank's stream loads only on the same "
            f"topology (reshard with SerializerStorageWriter/Reader instead)"
        )
    return group


def _saved_in(meta: dict[str, Any]) -> str:
    if meta.get("world_size") is None:
        return ""
    return f" (rank {meta.get('rank')} of {meta['world_size']})"


def _build_root(device_type: str, ranks: Any, names: Any) -> Any:
    world = dist.get_world_size()
    flat = torch.tensor(ranks, dtype=torch.int64).reshape(-1)
    if flat.numel() and (int(flat.max()) >= world or int(flat.min()) < 0):
        raise TopologyError(
            f"the stream's device mesh {ranks!r:.200} names ranks this world of {world} "
            f"does not have"
        )
    try:
        return _api().DeviceMesh(device_type, ranks, mesh_dim_names=names)
    except SerializerError:
        raise
    except Exception as e:
        raise TopologyError(
            f"cannot build the stream's device mesh ({device_type!r}, ranks {ranks!r:.200}, "
            f"dims {names!r}) on this world: {type(e).__name__}: {e}"
        ) from e


def _mesh_for(meta: dict[str, Any], device_type: str, group: Any) -> Any:
    desc = meta["mesh"]
    sliced = "slice" in desc
    root_ranks = desc["root_ranks"] if sliced else desc["ranks"]
    root_names = desc["root_dim_names"] if sliced else desc["dim_names"]
    key = _mesh_key(device_type, root_ranks, root_names)
    root = _cached_mesh(key, group)
    if root is None:
        root = _build_root(device_type, root_ranks, root_names)
        with _meshes_lock:
            _meshes[key] = (_ref(group), weakref.ref(root))
    if not sliced:
        return root
    names = desc["dim_names"]
    try:
        flattened = {}
        for entry in desc["slice"]:
            if isinstance(entry, tuple):
                name, dims = entry
                flat = _flattened(root, name)
                if flat is None:
                    flatten = getattr(root[dims], "_flatten", None)
                    if flatten is None:
                        raise UnsupportedError(
                            f"the stream's DTensor lies on a flattened mesh dim {name!r}, which "
                            f"torch {torch.__version__} cannot make (no DeviceMesh._flatten)"
                        )
                    flat = flatten(name)
                flattened[name] = flat
        if len(names) == 1 and names[0] in flattened:
            mesh = flattened[names[0]]
        else:
            mesh = root[names[0]] if len(names) == 1 else root[names]
    except SerializerError:
        raise
    except Exception as e:
        raise TopologyError(
            f"cannot slice the stream's device mesh {names!r} from {root!r}: "
            f"{type(e).__name__}: {e}"
        ) from e
    # The slice holds this rank's group, which is the stream's only on the rank that saved it.
    if list(mesh.mesh.shape) != list(_nested_shape(desc["ranks"])) or (
        meta.get("rank") == dist.get_rank() and _ranks(mesh) != desc["ranks"]
    ):
        raise TopologyError(
            f"the stream's device mesh holds ranks {desc['ranks']!r:.200}, but slicing "
            f"{names!r} here gives {_ranks(mesh)!r:.200}"
        )
    return mesh


def _flattened(root: Any, name: str) -> Any | None:
    """The mesh flattened as `name` from `root`, if it has been made already."""
    mapping = getattr(root, "_flatten_mapping", None)  # torch >= 2.9 or so
    if mapping is None:
        resources = _api().mesh_resources  # 2.5-2.8
        mapping = getattr(resources, "root_to_flatten_mapping", {}).get(root, {})
    return mapping.get(name)


def _check_position(mesh: Any, meta: dict[str, Any], placements: tuple[Any, ...]) -> None:
    """The local shard in the stream must be the one this rank holds on `mesh`: same mesh
    coordinate along every mesh dim that is not Replicate."""
    saved = meta.get("coordinate")
    here = mesh.get_coordinate()
    here = None if here is None else list(here)
    if saved is None or here is None:
        if here is None and saved is not None:
            raise TopologyError(
                f"this rank ({dist.get_rank()}) is not in the stream's device mesh, but the "
                f"rank that saved it{_saved_in(meta)} was"
            )
        if saved is None and here is not None:
            raise TopologyError(
                f"this rank ({dist.get_rank()}) is in the stream's device mesh, but the rank "
                f"that saved it{_saved_in(meta)} was not"
            )
        return
    for dim, (p, mine, theirs) in enumerate(zip(placements, here, saved, strict=True)):
        if p[0] != "replicate" and mine != theirs:
            raise TopologyError(
                f"this rank ({dist.get_rank()}) holds mesh coordinate {here} but the stream "
                f"holds the shard of coordinate {list(saved)}{_saved_in(meta)}: they differ on "
                f"mesh dim {dim} ({p[0]}); a rank's stream loads only on that rank"
            )


# ---------------------------------------------------------------------------- save / load


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
        "mesh": _describe_mesh(spec.mesh),
        "placements": tuple(_encode_placement(p) for p in spec.placements),
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
    _check_meta(meta)
    if getattr(_state, "local_shards", False) or local.is_meta:
        return local  # is_meta: a tensor load_keys did not select (dropped afterwards)
    api = _api()
    group = _world_for(meta)
    desc = meta["mesh"]
    device_type = desc["device_type"]
    if local.device.type != device_type:
        device_type = local.device.type  # map_location moved the shard: the mesh follows
    mesh = _mesh_for(meta, device_type, group)
    shape = meta["shape"]
    placements = meta["placements"]
    _check_position(mesh, meta, placements)
    decoded = tuple(_decode_placement(p, len(shape)) for p in placements)
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


SAFE_GLOBALS: dict[str, Any] = {"_rebuild_dtensor": _rebuild_dtensor}


def local_tensor(obj: Any) -> torch.Tensor:
    """The plain tensor that holds this rank's part of DTensor `obj` (in-place loads write
    into it)."""
    local: torch.Tensor | None = getattr(obj, "_local_tensor", None)
    if local is None:
        local = obj.to_local()
    assert local is not None
    return local


def _is_int(value: Any) -> bool:
    return type(value) is int


def _ints(value: Any, what: str, limit: int = 64) -> None:
    if type(value) is not tuple or len(value) > limit or not all(
        _is_int(v) and v >= 0 for v in value
    ):
        raise FormatError(f"DTensor {what} {value!r:.100} is malformed")


def _nested_shape(ranks: Any) -> tuple[int, ...]:
    """The shape of a rectangular nested list of non-negative ints, or FormatError."""
    if _is_int(ranks):
        if ranks < 0:
            raise FormatError("a DTensor's mesh names a negative rank")
        return ()
    if type(ranks) is not list or not ranks:
        raise FormatError(f"a DTensor's mesh ranks {ranks!r:.100} are malformed")
    shapes = {_nested_shape(r) for r in ranks}
    if len(shapes) != 1:
        raise FormatError("a DTensor's mesh ranks are not rectangular")
    return (len(ranks), *shapes.pop())


def _check_names(names: Any, ndim: int) -> None:
    if names is not None and (
        type(names) is not tuple or len(names) != ndim or not all(type(n) is str for n in names)
    ):
        raise FormatError(f"a DTensor's mesh dim names {names!r:.100} are malformed")


def _check_meta(meta: Any) -> None:
    """Validate a spec dict from a stream: anything unexpected is a FormatError."""
    if type(meta) is not dict:
        raise FormatError(f"a DTensor's spec is a {type(meta).__name__}, not a dict")
    version = meta.get("version")
    if type(version) is not int or version < 1:
        raise FormatError(f"a DTensor's spec has version {version!r:.50}")
    if version > SPEC_VERSION:
        raise FormatError(
            f"the stream holds a DTensor spec of version {version}, newer than this reader's "
            f"{SPEC_VERSION}: upgrade serializer to read it"
        )
    try:
        desc = meta["mesh"]
        placements = meta["placements"]
        if type(desc) is not dict or type(desc["device_type"]) is not str:
            raise FormatError("a DTensor's mesh is malformed")
        shape = _nested_shape(desc["ranks"])
        _check_names(desc["dim_names"], len(shape))
        if "slice" in desc:
            root_shape = _nested_shape(desc["root_ranks"])
            _check_names(desc["root_dim_names"], len(root_shape))
            path = desc["slice"]
            if type(path) is not tuple or desc["dim_names"] is None or len(path) != len(shape):
                raise FormatError("a DTensor's mesh slice is malformed")
            for entry in path:
                if type(entry) is tuple:
                    if len(entry) != 2 or type(entry[0]) is not str:
                        raise FormatError("a DTensor's mesh slice is malformed")
                    _check_names(entry[1], len(entry[1]))
                elif type(entry) is not str:
                    raise FormatError("a DTensor's mesh slice is malformed")
        if type(placements) is not tuple or len(placements) != len(shape):
            raise FormatError(
                f"a DTensor has {len(placements) if type(placements) is tuple else '?'} "
                f"placements for a mesh of {len(shape)} dims"
            )
        if not all(type(p) is tuple for p in placements):
            raise FormatError("a DTensor's placements are malformed")
        _ints(meta["shape"], "shape")
        _ints(meta["stride"], "stride")
        if len(meta["shape"]) != len(meta["stride"]):
            raise FormatError("a DTensor's shape and stride differ in length")
        for flag in ("requires_grad", "parameter"):
            if type(meta[flag]) is not bool:
                raise FormatError(f"a DTensor's {flag} flag is malformed")
        for key in ("rank", "world_size"):
            if meta.get(key) is not None and not _is_int(meta[key]):
                raise FormatError(f"a DTensor's {key} is malformed")
        if meta.get("coordinate") is not None:
            _ints(meta["coordinate"], "mesh coordinate")
            if len(meta["coordinate"]) != len(shape):
                raise FormatError("a DTensor's mesh coordinate is malformed")
        order = meta.get("shard_order")
        if order is not None and (
            type(order) is not tuple
            or not all(type(e) is tuple and len(e) == 2 and _is_int(e[0]) for e in order)
        ):
            raise FormatError("a DTensor's shard order is malformed")
        if order is not None:
            for _, mesh_dims in order:
                _ints(mesh_dims, "shard order")
    except KeyError as e:
        raise FormatError(f"a DTensor's spec lacks {e}") from None


# ---------------------------------------------------------------------------- the rest

from serializer.backends.distributed_transfer import (  # noqa: E402 (re-exported)
    DEFAULT_CHUNK_BYTES,
    TransferError,
    recv_state_dict,
    recv_state_dict_into,
    send_state_dict,
)


def __getattr__(name: str) -> Any:
    # The checkpoint classes subclass torch.distributed.checkpoint's, imported on first use.
    if name in ("SerializerStorageWriter", "SerializerStorageReader", "METADATA_FILE"):
        from serializer.backends import distributed_checkpoint

        return getattr(distributed_checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
