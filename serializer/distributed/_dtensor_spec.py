"""The DTensor record's spec: torch's DTensor classes found by feature detection, placements
encoded as tuples of primitives and back, and validation of a spec read from a stream
(anything unexpected is a `FormatError`). docs/FORMAT.md specifies the record."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import reprlib
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from serializer import FormatError, UnsupportedError

SPEC_VERSION = 1  # of the dict that describes a DTensor's spec in the skeleton


@functools.cache
def torch_api() -> SimpleNamespace:
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


def encode_placement(p: Any) -> tuple[Any, ...]:
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


def decode_placement(entry: tuple[Any, ...], ndim: int) -> Any:
    api = torch_api()
    kind = entry[0] if entry else None
    if kind == "replicate" and len(entry) == 1:
        return api.Replicate()
    if kind in ("shard", "strided_shard") and len(entry) == (2 if kind == "shard" else 3):
        dim = entry[1]
        if not _is_int(dim) or not -ndim <= dim < ndim:
            raise FormatError(
                f"DTensor placement {reprlib.repr(entry)} shards a dim the tensor lacks"
            )
        if kind == "shard":
            return api.Shard(dim)
        if not _is_int(entry[2]) or entry[2] < 1:
            raise FormatError(f"DTensor placement {reprlib.repr(entry)} is malformed")
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
    raise FormatError(f"unknown DTensor placement {reprlib.repr(entry)}")



def _is_int(value: Any) -> bool:
    return type(value) is int


def _ints(value: Any, what: str, limit: int = 64) -> None:
    if type(value) is not tuple or len(value) > limit or not all(
        _is_int(v) and v >= 0 for v in value
    ):
        raise FormatError(f"DTensor {what} {reprlib.repr(value)} is malformed")


_MAX_RANK_NODES = 1 << 20


def nested_shape(ranks: Any) -> tuple[int, ...]:
    """The shape of a rectangular nested list of non-negative ints, or FormatError (also for
    more than a million entries: shared sub-lists would take exponential time)."""
    budget = [_MAX_RANK_NODES]
    return _shape(ranks, budget)


def _shape(ranks: Any, budget: list[int]) -> tuple[int, ...]:
    budget[0] -= 1
    if budget[0] < 0:
        raise FormatError("a DTensor's mesh names more than a million ranks")
    if _is_int(ranks):
        if ranks < 0:
            raise FormatError("a DTensor's mesh names a negative rank")
        return ()
    if type(ranks) is not list or not ranks:
        raise FormatError(f"a DTensor's mesh ranks {reprlib.repr(ranks)} are malformed")
    shapes = {_shape(r, budget) for r in ranks}
    if len(shapes) != 1:
        raise FormatError("a DTensor's mesh ranks are not rectangular")
    return (len(ranks), *shapes.pop())


def _check_names(names: Any, ndim: int) -> None:
    if names is not None and (
        type(names) is not tuple or len(names) != ndim or not all(type(n) is str for n in names)
    ):
        raise FormatError(f"a DTensor's mesh dim names {reprlib.repr(names)} are malformed")


def check_meta(meta: Any) -> None:
    """Validate a spec dict from a stream: anything unexpected is a FormatError."""
    if type(meta) is not dict:
        raise FormatError(f"a DTensor's spec is a {type(meta).__name__}, not a dict")
    version = meta.get("version")
    if type(version) is not int or version < 1:
        raise FormatError(f"a DTensor's spec has version {reprlib.repr(version)}")
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
        shape = nested_shape(desc["ranks"])
        _check_names(desc["dim_names"], len(shape))
        if "slice" in desc:
            root_shape = nested_shape(desc["root_ranks"])
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
