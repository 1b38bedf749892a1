"""Resharding checkpoints: a `torch.distributed.checkpoint` storage layer in this format.

`SerializerStorageWriter` writes each rank's items as serializer streams (`__<rank>.srlz`, or
`__<rank>_<k>.srlz` with `thread_count` > 1) and the coordinator the checkpoint's metadata
(`metadata.srlz`), so DCP's planner reshards between any placements and world sizes while
every byte goes through this format; `SerializerStorageReader` loads them with
``weights_only=True``, reading only the records its plan needs where the file can seek.
Paths are local directories or URLs (fsspec). Part of the
`serializer.distributed` client package. This module imports `torch.distributed.checkpoint`
(about half a second), so `serializer.distributed` imports it only when one of its names is
first used.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed.checkpoint import metadata as md
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

import serializer
from serializer import FormatError, MismatchError

__all__ = ["METADATA_FILE", "SerializerStorageReader", "SerializerStorageWriter"]

METADATA_FILE = "metadata.srlz"


def _metadata_globals() -> list[Any]:
    """What a DCP `Metadata` pickles as, for loading it under weights_only."""
    names = (
        "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING",
    )  # fmt: skip
    allowed: list[Any] = [getattr(md, n) for n in names if hasattr(md, n)]
    for name, value in vars(torch).items():
        if isinstance(value, torch.layout):
            allowed.append((value, f"torch.{name}"))
    allowed.append((_layout, "torch.serialization._get_layout"))
    allowed.append((_layout, "torch._utils._get_layout"))
    allowed.append((_enum_member, "builtins.getattr"))  # how Python 3.11+ pickles an Enum
    return allowed


def _enum_member(cls: Any, name: Any) -> Any:
    """`getattr` for what a DCP Metadata pickles through it: only a member of one of
    torch.distributed.checkpoint.metadata's enums."""
    if (
        isinstance(cls, type)
        and issubclass(cls, enum.Enum)
        and cls.__module__ == "torch.distributed.checkpoint.metadata"
        and isinstance(name, str)
        and name in cls.__members__
    ):
        return cls[name]
    raise FormatError(f"the checkpoint metadata calls getattr({cls!r:.80}, {name!r:.80})")


def _layout(name: str) -> torch.layout:
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.layout):
        raise FormatError(f"unknown layout {name!r:.50}")
    return value


def _narrow(t: torch.Tensor, offsets: Any, lengths: Any) -> torch.Tensor:
    for dim, (start, length) in enumerate(zip(offsets, lengths, strict=True)):
        if start != 0 or length != t.size(dim):
            t = t.narrow(dim, start, length)
    return t


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` alone in its storage, so that a view does not save the tensor it views."""
    t = t.detach()
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.contiguous() if not t.is_contiguous() else t.clone()


def _bytes_of(data: torch.Tensor) -> bytes:
    """The bytes of a 1-D uint8 CPU tensor."""
    raw = bytearray(data.numel())
    if raw:
        torch.frombuffer(raw, dtype=torch.uint8).copy_(data)
    return bytes(raw)


def _done(value: Any) -> Any:
    future: Any = Future()
    future.set_result(value)
    return future


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)


def _makedirs(path: str, storage_options: dict[str, Any] | None) -> None:
    if "://" not in path:
        os.makedirs(path, exist_ok=True)
        return
    from fsspec.core import url_to_fs  # URLs need fsspec, as serializer.save does

    fs, root = url_to_fs(path, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)


class SerializerStorageWriter(StorageWriter):
    """A `torch.distributed.checkpoint` StorageWriter: each rank writes its items as
    `thread_count` serializer streams (`__<rank>_<k>.srlz`, written in parallel), the
    coordinator the metadata (`metadata.srlz`). `path` (or DCP's `checkpoint_id`) is a local
    directory or a URL (fsspec, with `storage_options`); every file is written atomically
    and, unless ``sync_files=False``, synced (as DCP's `FileSystemWriter`). Picklable, for
    DCP's process-based async save."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        thread_count: int = 1,
        sync_files: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if thread_count < 1:
            raise ValueError(f"thread_count must be at least 1, got {thread_count}")
        self.path = None if path is None else os.fspath(path)
        self.thread_count = thread_count
        self.sync_files = sync_files
        self.storage_options = storage_options
        self.is_coordinator = False

    def reset(self, checkpoint_id: Any = None) -> None:
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: Any) -> Any:
        if self.path is None:
            raise ValueError("SerializerStorageWriter needs a path (or a checkpoint_id)")
        _makedirs(self.path, self.storage_options)
        return plan

    def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
        return [dataclasses.replace(p, storage_data=f"__{i}") for i, p in enumerate(plans)]

    def _name(self, prefix: str, k: int) -> str:
        if prefix.endswith(".srlz"):  # a plan from before thread_count (one file)
            return prefix
        return f"{prefix}.srlz" if self.thread_count == 1 else f"{prefix}_{k}.srlz"

    def write_data(self, plan: Any, planner: Any) -> Any:
        assert self.path is not None
        files: list[dict[str, torch.Tensor]] = [{} for _ in range(self.thread_count)]
        results = []
        for i, item in enumerate(plan.items):
            data = planner.resolve_data(item)
            key = str(i)
            if item.type == WriteItemType.BYTE_IO:
                raw = bytearray(data.getbuffer())
                tensor = (
                    torch.frombuffer(raw, dtype=torch.uint8)
                    if raw
                    else torch.empty(0, dtype=torch.uint8)
                )
            else:
                tensor = _compact(data)
            k = i % self.thread_count
            files[k][key] = tensor
            results.append(
                WriteResult(
                    index=item.index,
                    size_in_bytes=tensor.numel() * tensor.element_size(),
                    storage_data=(self._name(plan.storage_data, k), key),
                )
            )
        jobs = [(self._name(plan.storage_data, k), entries) for k, entries in enumerate(files)]
        if self.thread_count == 1:
            self._write(*jobs[0])
        else:
            with ThreadPoolExecutor(self.thread_count) as pool:
                for done in [pool.submit(self._write, name, entries) for name, entries in jobs]:
                    done.result()
        return _done(results)

    def _write(self, name: str, obj: Any) -> None:
        assert self.path is not None
        serializer.save(
            obj, _join(self.path, name), sync=self.sync_files, storage_options=self.storage_options
        )

    def finish(self, metadata: Any, results: list[list[Any]]) -> None:
        metadata.storage_data = {r.index: r.storage_data for rs in results for r in rs}
        self._write(METADATA_FILE, metadata)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))

class SerializerStorageReader(StorageReader):
    """A `torch.distributed.checkpoint` StorageReader for what `SerializerStorageWriter`
    wrote: everything is loaded with ``weights_only=True``, each file with
    `serializer.load_keys` (only what this rank's plan reads is kept)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.path = None if path is None else os.fspath(path)
        self.storage_options = storage_options
        self.storage_data: dict[Any, Any] = {}

    def reset(self, checkpoint_id: Any = None) -> None:
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)
        self.storage_data = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if self.path is None:
            raise ValueError("SerializerStorageReader needs a path (or a checkpoint_id)")
        with serializer.safe_globals(_metadata_globals()):
            metadata = serializer.load(
                _join(self.path, METADATA_FILE), storage_options=self.storage_options
            )
        if not isinstance(metadata, Metadata):
            raise FormatError(f"{METADATA_FILE} holds a {type(metadata).__name__}")
        return metadata

    def set_up_storage_reader(
        self, metadata: Any, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self.storage_data = dict(metadata.storage_data)

    def prepare_local_plan(self, plan: Any) -> Any:
        return plan

    def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
        return plans

    def read_data(self, plan: Any, planner: Any) -> Any:
        assert self.path is not None
        by_file: dict[str, list[tuple[str, Any]]] = {}
        for req in plan.items:
            entry = self.storage_data.get(req.storage_index)
            if (
                type(entry) is not tuple
                or len(entry) != 2
                or not all(type(e) is str for e in entry)
                or os.path.basename(entry[0]) != entry[0]
            ):
                raise FormatError(f"no stored item for {req.storage_index} in the metadata")
            by_file.setdefault(entry[0], []).append((entry[1], req))
        for name, reqs in by_file.items():
            stored = serializer.load_keys(  # reads only the records of these keys
                _join(self.path, name),
                {key for key, _ in reqs},
                map_location="cpu",
                storage_options=self.storage_options,
            )
            for key, req in reqs:
                data = stored[key]
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(_bytes_of(data)))
                    continue
                source = _narrow(data, req.storage_offsets, req.lengths)
                target = planner.resolve_tensor(req).detach()
                if target.size() != source.size():
                    raise MismatchError(
                        f"{req.storage_index.fqn}: stored chunk {list(source.size())}, "
                        f"destination {list(target.size())}"
                    )
                target.copy_(source)
                planner.commit_tensor(req, target)
            del stored
        return _done(None)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        if not isinstance(checkpoint_id, (str, os.PathLike)):
            return False
        path = os.fspath(checkpoint_id)
        return "://" in path or os.path.isfile(os.path.join(path, METADATA_FILE))
