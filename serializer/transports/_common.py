"""What the two transports share: their errors, torchft's base class (or a stand-in where
torchft is not installed), deadlines, and the split of a state dict into an index and flat
parts of tensors that travel as separate streams and are joined again on arrival."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from serializer import SerializerError

T = TypeVar("T")

Path = tuple[Any, ...]
Part = dict[str, torch.Tensor]

INDEX_VERSION = 1


class TransportError(SerializerError, RuntimeError):
    """A checkpoint transfer failed: the peer refused or broke off, or sent something other
    than a checkpoint of this library's transports."""


class TransportTimeoutError(TransportError, TimeoutError):
    """A checkpoint transfer did not complete within its timeout."""


class StepMismatchError(TransportError, ValueError):
    """The peer serves or sends another step than the one asked for."""


class _CheckpointTransport(Generic[T], ABC):
    """torchft's `CheckpointTransport` interface, for where torchft is not installed."""

    @abstractmethod
    def metadata(self) -> str: ...

    @abstractmethod
    def send_checkpoint(
        self, dst_ranks: list[int], step: int, state_dict: T, timeout: timedelta
    ) -> None: ...

    def disallow_checkpoint(self) -> None:
        """Once this returns, the state dict last sent may be mutated."""

    @abstractmethod
    def recv_checkpoint(self, src_rank: int, metadata: str, step: int, timeout: timedelta) -> T: ...

    def shutdown(self, wait: bool = True) -> None:
        """Release the transport's resources."""


if TYPE_CHECKING:
    CheckpointTransport = _CheckpointTransport
else:
    try:
        from torchft.checkpointing.transport import CheckpointTransport
    except ImportError:
        CheckpointTransport = _CheckpointTransport


def seconds(timeout: timedelta | float) -> float:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


class Deadline:
    """A point in time that a transfer must complete by."""

    def __init__(self, timeout: timedelta | float, what: str) -> None:
        self.timeout = seconds(timeout)
        self.what = what
        self._end = time.monotonic() + self.timeout

    def left(self) -> float:
        return self._end - time.monotonic()

    def remaining(self) -> float:
        """Seconds left; raises `TransportTimeoutError` where none are."""
        left = self.left()
        if left <= 0:
            raise self.error()
        return left

    def error(self) -> TransportTimeoutError:
        return TransportTimeoutError(f"{self.what} timed out after {self.timeout:g} s")


# -- splitting a state dict into an index and parts, and joining them ---------------------

_CONTAINERS = (dict, OrderedDict, list, tuple)


def _rebuild(obj: Any, items: Any) -> Any:
    new = type(obj)(items)
    if type(obj) is OrderedDict and vars(obj):
        vars(new).update(vars(obj))  # a module state dict's `_metadata`
    return new


def _strip(obj: Any, path: Path, found: list[tuple[Path, torch.Tensor]]) -> Any:
    """`obj` with each tensor inside dicts, lists and tuples replaced by None; the tensors
    go to `found` with their paths. Other objects are leaves and travel whole in the index."""
    if isinstance(obj, torch.Tensor):
        found.append((path, obj))
        return None
    if type(obj) in (dict, OrderedDict):
        return _rebuild(obj, [(k, _strip(v, (*path, k), found)) for k, v in obj.items()])
    if type(obj) in (list, tuple):
        return type(obj)(_strip(v, (*path, i), found) for i, v in enumerate(obj))
    return obj


def tensors(obj: Any) -> dict[Path, torch.Tensor]:
    """Every tensor `split` would send from `obj`, by path."""
    found: list[tuple[Path, torch.Tensor]] = []
    _strip(obj, (), found)
    return dict(found)


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)  # a DTensor: its shard holds the bytes
    return to_local() if callable(to_local) else t


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    local = _local(t)
    try:
        return str(local.device), local.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage (sparse...): save refuses it
        return "", id(t)


def _storage_nbytes(t: torch.Tensor) -> int:
    try:
        return int(_local(t).untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return 0


def split(obj: Any, step: int, num_chunks: int) -> tuple[dict[str, Any], list[Part]]:
    """An index (the tree without its tensors, and which paths each part holds) and up to
    `num_chunks` parts of about equal size. Tensors that share a storage go to one part, so
    that they arrive as views of one storage again."""
    found: list[tuple[Path, torch.Tensor]] = []
    tree = _strip(obj, (), found)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (_, t) in enumerate(found):
        groups.setdefault(_storage_key(t), []).append(i)
    n = max(1, num_chunks)
    loads = [0] * n
    members: list[list[int]] = [[] for _ in range(n)]

    def nbytes(group: list[int]) -> int:
        return _storage_nbytes(found[group[0]][1])

    for group in sorted(groups.values(), key=nbytes, reverse=True):
        c = loads.index(min(loads))
        members[c].extend(group)
        loads[c] += nbytes(group)
    chosen = [sorted(m) for m in members if m] or [[]]
    index = {
        "version": INDEX_VERSION,
        "step": step,
        "tree": tree,
        "parts": [[found[i][0] for i in m] for m in chosen],
    }
    parts = [{str(j): found[i][1] for j, i in enumerate(m)} for m in chosen]
    return index, parts


def check_index(index: Any, step: int, peer: str) -> list[list[Path]]:
    """The paths of each part, after checking that `index` is one `split` made for `step`."""
    if (
        not isinstance(index, dict)
        or index.get("version") != INDEX_VERSION
        or not isinstance(index.get("parts"), list)
        or not all(
            isinstance(p, list) and all(isinstance(k, tuple) for k in p) for p in index["parts"]
        )
        or "tree" not in index
    ):
        raise TransportError(f"{peer} sent something other than a checkpoint index")
    try:
        for paths in index["parts"]:
            for path in paths:
                hash(path)
    except TypeError:
        raise TransportError(f"{peer} sent an index with unhashable paths") from None
    if index.get("step") != step:
        raise StepMismatchError(f"{peer} sent step {index.get('step')!r}, not step {step}")
    return list(index["parts"])


def check_part(part: Any, paths: list[Path], peer: str) -> None:
    if not isinstance(part, dict) or sorted(part) != sorted(str(j) for j in range(len(paths))):
        raise TransportError(f"{peer} sent a part that does not match its index")


def dest_part(dest: dict[Path, torch.Tensor], paths: list[Path]) -> Part | None:
    """The destination tensors of a part where `dest` has every one of its paths."""
    if not paths or not all(p in dest for p in paths):
        return None
    return {str(j): dest[p] for j, p in enumerate(paths)}


def join(index: dict[str, Any], parts: list[Part], peer: str) -> Any:
    """The tree of `index` with the tensors of `parts` at their paths."""
    values: dict[Path, torch.Tensor] = {}
    for paths, part in zip(index["parts"], parts, strict=True):
        values.update((p, part[str(j)]) for j, p in enumerate(paths))
    placed = 0

    def fill(obj: Any, path: Path) -> Any:
        nonlocal placed
        if obj is None and path in values:
            placed += 1
            return values[path]
        if type(obj) in (dict, OrderedDict):
            return _rebuild(obj, [(k, fill(v, (*path, k))) for k, v in obj.items()])
        if type(obj) in (list, tuple):
            return type(obj)(fill(v, (*path, i)) for i, v in enumerate(obj))
        return obj

    tree = fill(index["tree"], ())
    if placed != len(values):
        raise TransportError(f"{peer} sent an index whose paths are not in its tree")
    return tree
