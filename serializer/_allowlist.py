"""What a ``weights_only`` load may name as a global, and the API to extend it.

The default allowlist is torch's own (`torch._weights_only_unpickler._get_allowed_globals`,
read from the running torch) less what a skeleton of this format never needs and a hostile
one could misuse: tensor and storage classes and torch's tensor rebuild functions (their
constructors allocate uninitialized memory of a size the stream chooses; this format's
tensors come from the tensor table only). ``bytes``, ``bytearray`` and ``_codecs.encode`` are
allowed only in the forms pickle writes for them, never with a size. On top: what the caller
allowed (`add_safe_globals`, `safe_globals`, and torch's own `add_safe_globals`), and the
globals of registered tensor codecs. Modules torch blocks (``os``, ``sys``, ...) stay blocked
whatever the caller allows, as in torch.
"""

from __future__ import annotations

import _codecs
import collections
import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from . import _registry
from ._errors import FormatError

__all__ = [
    "add_safe_globals",
    "clear_safe_globals",
    "get_safe_globals",
    "safe_globals",
]

_lock = threading.Lock()
_user_globals: dict[str, Any] = {}
_local = threading.local()

_torch_rules: Any = getattr(torch, "_weights_only_unpickler", None)
BLOCKED_MODULES: frozenset[str] = frozenset(
    getattr(_torch_rules, "_blocklisted_modules", None) or ("sys", "os", "posix", "nt")
)


def _bytes(*args: Any) -> bytes:
    """``bytes()`` as pickle protocol 2 writes empty bytes: no arguments."""
    if args:
        raise FormatError("skeleton calls bytes() with arguments")
    return b""


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` as pickle writes it: from a str and its encoding, or from bytes."""
    if not args or not isinstance(args[0], (str, bytes)) or len(args) > 2:
        raise FormatError("skeleton calls bytearray() with other than a str or bytes")
    return bytearray(*args)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 writes bytes: a str and "latin1"."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise FormatError("skeleton calls _codecs.encode other than as pickle writes bytes")
    return _codecs.encode(text, "latin1")


def _name_of(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _allocates(value: Any) -> bool:
    """Tensor and storage classes and tensor rebuild functions (see the module docstring)."""
    if isinstance(value, type):
        storages = (torch.storage.TypedStorage, torch.storage.UntypedStorage)
        return issubclass(value, (torch.Tensor, *storages)) or "Storage" in value.__name__
    return "_rebuild" in getattr(value, "__name__", "")


def _builtin_allowlist() -> dict[str, Any]:
    torch_default = getattr(_torch_rules, "_get_allowed_globals", None)
    allowed = {
        name: value
        for name, value in (torch_default() if torch_default is not None else {}).items()
        if not _allocates(value)
    }
    allowed.update(
        {
            "collections.OrderedDict": collections.OrderedDict,
            "collections.Counter": collections.Counter,
            "builtins.set": set,
            "builtins.frozenset": frozenset,
            "builtins.complex": complex,
            "builtins.slice": slice,
            "builtins.bytes": _bytes,
            "builtins.bytearray": _bytearray,
            "_codecs.encode": _encode,
            "torch.Size": torch.Size,
            "torch.device": torch.device,
        }
    )
    for value in vars(torch).values():
        if isinstance(value, (torch.dtype, torch.layout)):
            allowed[f"torch.{str(value).removeprefix('torch.')}"] = value
    return allowed


BUILTIN = _builtin_allowlist()


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


def lookup(name: str) -> Any | None:
    """The object a weights_only load may use for the global `name` ("module.qualname"),
    or None; blocked modules are the caller's to check (`BLOCKED_MODULES`)."""
    found = BUILTIN.get(name)
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
