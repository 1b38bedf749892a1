"""Building the loaded object: tensors as views of their storages' bytes, and the object
around them from the skeleton. Also the data-less *outline* of a stream (each tensor left
as its `TensorRef`), and the dotted key paths of the tensors in an object."""

from __future__ import annotations

import pickle
import reprlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from . import _format, _pickling
from ._errors import ChecksumError, FormatError, SerializerError, TruncatedError, short_repr
from ._format import TensorRef
from ._read import Header, tensor_ref


def unpickling(pickle_module: Any, weights_only: bool | None) -> tuple[Any, bool]:
    """The pickle module a load uses (None: the restricted unpickler) and whether it loads
    weights only, as ``torch.load`` decides: ``weights_only=None`` means True unless a
    `pickle_module` is given."""
    if weights_only is None:
        weights_only = pickle_module is None
    if weights_only:
        if pickle_module is not None:
            raise RuntimeError(
                "Can not safely load weights when explicit pickle_module is specified"
            )
        return None, True
    return (pickle if pickle_module is None else pickle_module), False


def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a tensor of `shape` and `stride` lies in row-major order without gaps."""
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def rebuild(ref: TensorRef, data: torch.Tensor | None) -> torch.Tensor:
    """The tensor `ref` describes, as a view of its storage's bytes `data`."""
    dtype = _format.DTYPE_BY_ID.get(ref.dtype_id)
    if dtype is None:
        dtype = _format.dtype_from_id(ref.dtype_id, f"a tensor of storage {ref.storage}")
    if data is None:  # not selected: a data-less stand-in that no code can mistake for data
        t = torch.empty_strided(ref.shape, ref.stride, dtype=dtype, device="meta")
    else:
        t = data.view(dtype).as_strided(ref.shape, ref.stride, ref.offset)
    if ref.kind == _format.PARAMETER:
        return torch.nn.Parameter(t, requires_grad=ref.requires_grad)
    if ref.requires_grad:
        t.requires_grad_(True)
    return t


def build(
    header: Header,
    datas: list[torch.Tensor | None],
    weights_only: bool,
    pickle_module: Any,
    pickle_load_args: dict[str, Any],
    order: dict[int, int] | None = None,
) -> Any:
    """The stream's object, its tensors built over `datas` (None: not loaded, a meta tensor).
    `order`, where given, receives id(tensor) -> persistent id (see `find`)."""
    # The header's entries and each storage's bytes are dropped once built (the tensors hold
    # the storages), so that the peak is the result and little more; the header is spent.
    tensors: list[TensorRef | None] = header.tensors  # type: ignore[assignment]
    count = len(tensors)
    built: dict[int, torch.Tensor] = {}
    unbuilt = [0] * len(datas)
    for ref in header.tensors:
        unbuilt[ref.storage] += 1

    def persistent_load(pid: Any) -> torch.Tensor:
        if type(pid) is not int or not 0 <= pid < count:
            raise FormatError(f"skeleton names tensor {short_repr(pid)} of {count}")
        t = built.get(pid)
        if t is not None:  # named twice: the same object twice, as pickle's memo would give
            return t
        ref = tensors[pid]
        assert ref is not None  # built ones are answered from `built`
        tensors[pid] = None
        try:
            t = built[pid] = rebuild(ref, datas[ref.storage])
        except SerializerError:
            raise
        except Exception as e:
            raise FormatError(f"cannot rebuild tensor {short_repr(pid)}: {e}") from e
        if order is not None:
            order[id(t)] = pid
        unbuilt[ref.storage] -= 1
        if not unbuilt[ref.storage]:
            datas[ref.storage] = None
        return t

    try:
        return _pickling.loads(
            header.skeleton,
            persistent_load,
            weights_only=weights_only,
            pickle_module=pickle_module,
            **pickle_load_args,
        )
    except FormatError as e:
        # A codec's rebuild of a tensor subclass raised one of our errors (e.g. a
        # DeviceError: no process group for a DTensor): report it, not a malformed skeleton.
        cause = e.__cause__
        if isinstance(cause, SerializerError) and not isinstance(cause, FormatError):
            raise cause from None
        raise


def outline(
    header: Header,
    weights_only: bool,
    pickle_module: Any,
    pickle_load_args: dict[str, Any],
    order: dict[int, int] | None = None,
) -> Any:
    """The stream's object with each tensor left as its `TensorRef` (no data needed).
    `order`, where given, receives id(TensorRef) -> persistent id (see `find`)."""

    def persistent_load(pid: Any) -> TensorRef:
        ref = tensor_ref(header, pid)
        if order is not None:
            order[id(ref)] = pid
        return ref

    return _pickling.loads(
        header.skeleton,
        persistent_load,
        weights_only=weights_only,
        pickle_module=pickle_module,
        **pickle_load_args,
    )


def refs_of(
    header: Header, weights_only: bool, pickle_module: Any, pickle_load_args: dict[str, Any]
) -> list[tuple[str, TensorRef]]:
    """(dotted key, TensorRef) of every tensor of the stream, from its outline."""
    order: dict[int, int] = {}
    tree = outline(header, weights_only, pickle_module, pickle_load_args, order)
    return find(tree, TensorRef, order)


def _children(value: Any, order: Mapping[int, int] | None) -> Iterator[tuple[Any, Any]] | None:
    """(key, child) of a mapping, list, tuple, set or plain object; None for a leaf."""
    if isinstance(value, Mapping):
        return iter(value.items())
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    if isinstance(value, (set, frozenset)):
        return enumerate(_in_stream_order(value, order or {}))
    if hasattr(value, "__dict__") and not isinstance(value, type):
        attributes: dict[str, Any] = vars(value)
        return iter(attributes.items())
    return None


def _in_stream_order(members: set[Any] | frozenset[Any], order: Mapping[int, int]) -> list[Any]:
    """A set's members in an order that is the same in the outline and in the loaded
    object (where the iteration orders differ: a `TensorRef` hashes by value, a tensor by
    identity): by the persistent id of the first tensor each holds (`order`: id of a tensor
    or `TensorRef` -> its persistent id), members without tensors after them, as iterated."""

    def first_tensor(member: Any) -> float:
        if id(member) in order:
            return order[id(member)]
        if isinstance(member, (str, bytes, int, float, bool)) or member is None:
            return float("inf")
        pids = [order.get(id(leaf)) for _, leaf in find(member, (torch.Tensor, TensorRef), order)]
        return min((p for p in pids if p is not None), default=float("inf"))

    return sorted(members, key=first_tensor)


def find(
    obj: Any, leaf: type | tuple[type, ...], order: Mapping[int, int] | None = None
) -> list[tuple[str, Any]]:
    """(dotted key, leaf) for every `leaf` inside mappings, lists, tuples, sets and plain
    objects; each container is entered once, however often it is shared. A set's members
    are numbered in stream order, given `order` (what `outline` or `build` filled in)."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, leaf):
            found.append((path, value))
            continue
        if id(value) in seen:
            continue
        children = _children(value, order)
        if children is None:
            continue
        seen.add(id(value))
        items = [(f"{path}.{_key(k)}" if path else _key(k), v) for k, v in children]
        stack.extend(reversed(items))
    return found


def at_path(obj: Any, path: str, order: Mapping[int, int] | None = None) -> Any:
    """What `find` lists under the dotted key `path` (KeyError if nothing is there)."""
    stack = [(obj, path)]
    while stack:
        value, rest = stack.pop()
        children = _children(value, order)
        for k, child in children if children is not None else ():
            text = _key(k)
            if rest == text:
                return child
            if rest.startswith(text + "."):
                stack.append((child, rest[len(text) + 1 :]))
    raise KeyError(path)


class _KeyRepr(reprlib.Repr):
    """`short_repr`, with any tensor written ``<tensor>``: a key that is (or holds) a
    tensor gets the same dotted key from the outline (a `TensorRef`) as from the loaded
    object (a tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 80

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, (torch.Tensor, TensorRef)):
            return "<tensor>"
        return super().repr1(x, level)


_key_repr = _KeyRepr()


def _key(k: Any) -> str:
    return k if type(k) is str else str(k) if type(k) in (int, bool) else _key_repr.repr(k)


RecordError = (TruncatedError, ChecksumError)


def located(
    error: TruncatedError | ChecksumError,
    header: Header,
    refs: Sequence[tuple[str, TensorRef]] | None = None,
) -> FormatError:
    """`error`, with the size of the storage it names and the keys of the tensors that use it.

    `refs` are the outline's (key, TensorRef) pairs where the caller has them; otherwise they
    are found from the skeleton (only on this error path)."""
    storage = error.storage
    if storage is None or not 0 <= storage < len(header.table):
        return error
    if refs is None:
        try:
            refs = refs_of(header, True, None, {})
        except SerializerError:
            refs = []
    keys = [key for key, ref in refs if ref.storage == storage]
    return error.located(header.table[storage].nbytes, keys)
