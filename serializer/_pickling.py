"""The object skeleton: pickling with tensors swapped for references, and the allowlist.

Under ``weights_only=True`` the skeleton is read by `RestrictedUnpickler`, which resolves a
global only if it is on the allowlist: a fixed set of harmless builtins and torch types, what
the caller added with `add_safe_globals`, and what torch's own allowlist holds.
"""

from __future__ import annotations

import _compat_pickle
import collections
import contextlib
import io
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from . import _registry
from ._errors import FormatError, UnsafeGlobalError

__all__ = [
    "add_safe_globals",
    "clear_safe_globals",
    "get_safe_globals",
    "safe_globals",
]

_lock = threading.Lock()
_user_globals: dict[str, Any] = {}
_local = threading.local()


def _name_of(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _bytes(*args: Any) -> bytes:
    """``bytes`` as protocol 2 pickles empty bytes, without ``bytes(n)`` allocations."""
    if any(isinstance(a, int) for a in args):
        raise FormatError("skeleton calls bytes() with a size")
    return bytes(*args)


def _builtin_allowlist() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.complex": complex,
        "builtins.slice": slice,
        "builtins.bytes": _bytes,
        "_codecs.encode": __import__("_codecs").encode,  # bytes under pickle protocol 2
        "torch.Size": torch.Size,
        "torch.device": torch.device,
    }
    for value in vars(torch).values():
        if isinstance(value, torch.dtype):
            allowed[f"torch.{str(value).removeprefix('torch.')}"] = value
    return allowed


_BUILTIN = _builtin_allowlist()


def _entries(globals_: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    for item in globals_:
        if isinstance(item, tuple):
            obj, name = item
            yield name, obj
        else:
            yield _name_of(item), item


def add_safe_globals(globals_: Iterable[Any]) -> None:
    """Allow these classes or functions in ``weights_only`` loads, in every thread.

    Items are objects, or ``(object, "module.name")`` pairs for objects pickled under
    another name. Mirrors ``torch.serialization.add_safe_globals``.
    """
    with _lock:
        _user_globals.update(_entries(globals_))


def get_safe_globals() -> list[Any]:
    """What `add_safe_globals` has allowed (not the built-in set)."""
    with _lock:
        return list(_user_globals.values())


def clear_safe_globals() -> None:
    with _lock:
        _user_globals.clear()


@contextlib.contextmanager
def safe_globals(globals_: Iterable[Any]) -> Iterator[None]:
    """Allow these globals in ``weights_only`` loads made by this thread, inside the block."""
    previous = getattr(_local, "extra", {})
    _local.extra = {**previous, **dict(_entries(globals_))}
    try:
        yield
    finally:
        _local.extra = previous


def _torch_allowed() -> dict[str, Any]:
    """Globals the caller allowed through torch's own API, where this torch has it."""
    getter = getattr(torch.serialization, "get_safe_globals", None)
    if getter is None:
        return {}
    return dict(_entries(getter()))


def _lookup(name: str) -> Any | None:
    found = _BUILTIN.get(name)
    if found is not None:
        return found
    found = getattr(_local, "extra", {}).get(name)
    if found is not None:
        return found
    with _lock:
        found = _user_globals.get(name)
    if found is not None:
        return found
    found = _registry.codec_global(name)
    if found is not None:
        return found
    return _torch_allowed().get(name)


class SkeletonPickler(pickle.Pickler):
    """Pickles an object, handing every tensor to `ref` for a persistent reference."""

    def __init__(self, file: io.BytesIO, protocol: int, ref: Callable[[Any], Any]) -> None:
        super().__init__(file, protocol)
        self._ref = ref

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if type(obj) in _PLAIN or _registry.codec_for(type(obj)) is None:
                return self._ref(obj)
            return None  # a codec's reduction, in reducer_override
        if isinstance(obj, (torch.storage.UntypedStorage, torch.storage.TypedStorage)):
            return self._ref(obj)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            codec = _registry.codec_for(type(obj))
            if codec is not None:
                return codec.reduce(obj)
        return NotImplemented


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def dumps(obj: Any, pickle_module: Any, protocol: int, ref: Callable[[Any], Any]) -> bytes:
    buf = io.BytesIO()
    if pickle_module is pickle:
        SkeletonPickler(buf, protocol, ref).dump(obj)
    else:

        class _Pickler(pickle_module.Pickler):  # type: ignore[misc]
            persistent_id = SkeletonPickler.persistent_id
            reducer_override = SkeletonPickler.reducer_override

        pickler = _Pickler(buf, protocol)
        pickler._ref = ref
        pickler.dump(obj)
    return buf.getvalue()


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allowlisted globals."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 streams name Python 3 builtins by their Python 2 names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        found = _lookup(full)
        if found is None:
            raise UnsafeGlobalError(
                f"Weights only load failed: GLOBAL {full} is not an allowed global by default. "
                f"If you trust this class or function, allow it with "
                f"serializer.add_safe_globals([{full}]) or inside "
                f"`with serializer.safe_globals([{full}]):` (torch.serialization.add_safe_globals "
                f"works too), or load with weights_only=False if you trust the whole stream."
            )
        return found


def loads(
    data: bytes,
    persistent_load: Callable[[Any], Any],
    *,
    weights_only: bool,
    pickle_module: Any,
    **pickle_load_args: Any,
) -> Any:
    """Unpickle a skeleton. Under weights_only, any failure is the library's error."""
    pickle_load_args.setdefault("encoding", "utf-8")
    if not weights_only:
        unpickler = pickle_module.Unpickler(io.BytesIO(data), **pickle_load_args)
        unpickler.persistent_load = persistent_load
        return unpickler.load()
    unpickler = RestrictedUnpickler(io.BytesIO(data), **pickle_load_args)
    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    try:
        return unpickler.load()
    except (UnsafeGlobalError, FormatError):
        raise
    except Exception as e:  # hostile bytes make the C unpickler raise anything
        raise FormatError(f"malformed skeleton: {type(e).__name__}: {e}") from e
