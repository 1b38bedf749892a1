"""load_into: a stream loaded in place into the caller's tensors.

Keys, shapes and dtypes are checked against the stream's outline before any data is read.
A storage that maps one-to-one onto a contiguous destination is read straight into it by its
device's backend; others are read once and copied into each destination that views them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from . import _format
from ._build import RecordError, find, is_contiguous, located, refs_of
from ._byteio import tensor_memory
from ._errors import FormatError, MismatchError
from ._format import StorageEntry, TensorRef
from ._read import (
    Progress,
    Stream,
    allocate,
    byteswap,
    check_trailer,
    plan_records,
    read_header,
    reading,
    skip_records,
    watch,
)
from ._records import HASH_IN_THREAD
from ._registry import backend_for, local_tensor
from ._ring import runs


class LoadResult(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def load_into(
    state_dict: Mapping[str, Any] | torch.nn.Module,
    f: Any,
    *,
    strict: bool = True,
    cast: bool = False,
    atomic: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> LoadResult:
    """Load a stream of tensors in place into the tensors of `state_dict` (a mapping, or a
    module: its parameters and buffers, as ``module.state_dict()`` names them).

    Keys are matched by dotted path; shapes must agree, and dtypes too unless `cast` is
    true (then values are converted as ``load_state_dict`` does). A stream storage that
    maps one-to-one onto a contiguous destination of its dtype is read straight into it;
    others are read once and copied into each destination that views them.

    Storages are loaded in stream order, each verified against its checksum. If loading
    fails (`TruncatedError`, `ChecksumError`), the destinations of the storages before the
    failing one hold the stream's values, those after it their old values, and those of
    the failing storage (the error's `keys`) their old values if the storage is under
    1 MiB and on the CPU, or if `atomic` is true; otherwise undefined bytes. `atomic=True`
    reads every other storage into a buffer of its size before copying it over: all or
    nothing per tensor, at the cost of that buffer and a copy.

    `progress`, if given, is called with (bytes read, bytes of the whole stream) once the
    header is read and then as bytes arrive (or are seeked past), the last time with both
    equal.
    """
    with reading(f, storage_options) as stream:
        header = read_header(stream.bytes)
        watch(stream.bytes, header, progress)
        refs = refs_of(header, True, None, {})
        in_stream = dict(refs)
        if isinstance(state_dict, torch.nn.Module):
            state_dict = state_dict.state_dict(keep_vars=True)
        dest = {key: local_tensor(t) for key, t in find(state_dict, torch.Tensor)}
        missing = sorted(dest.keys() - in_stream.keys())
        unexpected = sorted(in_stream.keys() - dest.keys())
        if strict and (missing or unexpected):
            hint = ""
            if any("_parameters." in k or "_buffers." in k for k in missing):
                hint = " (the destination looks like a module's attributes: pass the module)"
            raise MismatchError(
                f"keys differ: missing from the stream {missing!r:.300}, "
                f"not in the destination {unexpected!r:.300}{hint}"
            )
        problems = []
        plan_keys = dest.keys() & in_stream.keys()
        plan: dict[int, list[tuple[TensorRef, torch.Tensor]]] = {}
        for key, ref in in_stream.items():
            target = dest.get(key)
            if target is None:
                continue
            dtype = _format.DTYPE_BY_ID.get(ref.dtype_id)
            if dtype is None:
                dtype = _format.dtype_from_id(ref.dtype_id, f"tensor {key!r}")
            if (target.dtype != dtype and not cast) or target.shape != ref.shape:
                problems.append(
                    f"{key!r}: stream has {dtype} {list(ref.shape)}, "
                    f"destination has {target.dtype} {list(target.shape)}"
                )
            plan.setdefault(ref.storage, []).append((ref, target))
        if problems:
            shapes_agree = all(dest[k].shape == in_stream[k].shape for k in plan_keys)
            advice = "\n(only dtypes differ: pass cast=True to convert)" if shapes_agree else ""
            raise MismatchError("cannot load in place:\n  " + "\n  ".join(problems) + advice)
        plan_records(stream, header, plan)
        try:
            with torch.no_grad():
                for wanted, run in runs([index in plan for index in range(len(header.table))]):
                    if not wanted:
                        skip_records(stream, header, run)
                        continue
                    for index in run:
                        entry = header.table[index]
                        _fill(index, entry, plan[index], stream, header.swapped, atomic)
        except RecordError as e:
            raise located(e, header, refs) from None
        check_trailer(stream.bytes, header)
        return LoadResult(missing, unexpected)


# Writes through raw memory bypass autograd's version counter: bump it (torch >= 2.1), so that
# a tensor saved for backward and then loaded into fails loudly instead of silently.
_increment_version = getattr(torch.autograd.graph, "increment_version", None)


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """A 1-D uint8 view of the bytes of a contiguous tensor."""
    flat = t.detach().reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def _takes_raw_bytes(t: torch.Tensor) -> bool:
    """Whether the stream's bytes can go straight into `t`'s memory: contiguous, and no lazy
    conjugate or negative bit (whose memory holds other values than `t` reads as)."""
    return t.is_contiguous() and not t.is_conj() and not t.is_neg()


def _fill(
    index: int,
    entry: StorageEntry,
    users: list[tuple[TensorRef, torch.Tensor]],
    stream: Stream,
    swap: bool,
    atomic: bool,
) -> None:
    # Straight into a destination, unless the caller wants all or nothing per tensor for a
    # storage that a record read would not verify before writing (see load_into).
    straight = not atomic or (entry.nbytes < HASH_IN_THREAD and users[0][1].is_cpu)
    if straight and len(users) == 1 and not swap:  # one CPU tensor that is the whole storage
        ref, target = users[0]
        if (
            target.is_cpu
            and target.dtype == _format.DTYPE_BY_ID[ref.dtype_id]
            and ref.offset == 0
            and ref.stride == target.stride()
            and _takes_raw_bytes(target)
            and target.nbytes == entry.nbytes
        ):
            stream.records.read_record(tensor_memory(target), index)
            if _increment_version is not None:
                _increment_version(target)
            return
    direct = None
    for ref, target in users if straight else ():
        if (
            target.dtype == _format.DTYPE_BY_ID[ref.dtype_id]
            and ref.offset == 0
            and is_contiguous(ref.shape, ref.stride)
            and target.numel() * target.element_size() == entry.nbytes
            and _takes_raw_bytes(target)
        ):
            direct = target
            break
    if direct is not None:
        data = _bytes_of(direct)
        backend_for(direct.device.type).read_many([(data, index)], stream.records)
        base, base_offset = direct.untyped_storage(), direct.storage_offset()
        if _increment_version is not None:
            _increment_version(direct)
    else:
        device = users[0][1].device
        backend = backend_for(device.type)
        data = allocate(backend, entry.nbytes, device, index)
        backend.read_many([(data, index)], stream.records)
        base, base_offset = data.untyped_storage(), 0
    if swap:
        byteswap(data, entry.dtype_id)
    for ref, target in users:
        if target is direct:
            continue
        try:
            dtype = _format.DTYPE_BY_ID[ref.dtype_id]  # the stream's (copy_ casts, if asked)
            view = torch.empty(0, dtype=dtype, device=base.device).set_(
                base, base_offset + ref.offset, ref.shape, ref.stride
            )
        except (RuntimeError, TypeError, ValueError, OverflowError) as e:  # as load's rebuild
            raise FormatError(f"cannot view storage {index} as a tensor of it: {e}") from e
        if dtype == torch.bool and target.dtype == torch.bool:
            # Byte for byte, as `load` gives them: copy_ would turn a stored byte other than
            # 0 and 1 into 1, so one stream would load two ways.
            target.view(torch.uint8).copy_(view.view(torch.uint8))
        else:
            target.copy_(view)
