"""Device meshes in DTensor records: a mesh described by primitives (ranks, dim names, how a
slice was cut from its root) on save, and rebuilt on load on the current default process
group, checked against the world and the mesh coordinate the stream was saved at."""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from serializer import DeviceError, SerializerError, UnsupportedError

from ._dtensor_spec import nested_shape, torch_api


class TopologyError(DeviceError):
    """A DTensor of the stream cannot be placed on this process's world: no default process
    group, another world size, or this rank does not hold the shard the stream holds."""


def _root_of(mesh: Any) -> Any:
    """The mesh `mesh` was sliced from (itself if it was not), across torch versions."""
    getter = getattr(mesh, "_get_root_mesh", None)  # torch >= 2.9 or so
    if callable(getter):
        root = getter()
    else:
        resources = torch_api().mesh_resources
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


def describe_mesh(mesh: Any) -> dict[str, Any]:
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


def world_for(meta: dict[str, Any]) -> Any:
    """The default group, checked against the world the stream was saved in."""
    group = _default_group()
    if group is None:
        raise TopologyError(
            "loading a DTensor needs an initialized default process group "
            "(torch.distributed.init_process_group) with the world it was saved in"
            + _saved_in(meta)
            + "; or load its local shard as a plain tensor inside "
            "`with serializer.distributed.local_shards():`"
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
        return torch_api().DeviceMesh(device_type, ranks, mesh_dim_names=names)
    except SerializerError:
        raise
    except Exception as e:
        raise TopologyError(
            f"cannot build the stream's device mesh ({device_type!r}, ranks {ranks!r:.200}, "
            f"dims {names!r}) on this world: {type(e).__name__}: {e}"
        ) from e


def mesh_for(meta: dict[str, Any], device_type: str, group: Any) -> Any:
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
    if list(mesh.mesh.shape) != list(nested_shape(desc["ranks"])) or (
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
        resources = torch_api().mesh_resources  # 2.5-2.8
        mapping = getattr(resources, "root_to_flatten_mapping", {}).get(root, {})
    return mapping.get(name)


def check_position(mesh: Any, meta: dict[str, Any], placements: tuple[Any, ...]) -> None:
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
