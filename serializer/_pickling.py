"""The object skeleton: pickling with tensors swapped for references, and unpickling.

Under ``weights_only=True`` the skeleton is first checked opcode by opcode (`_pickle_check`)
and then read by `RestrictedUnpickler`, which resolves a global only if `_allowlist` allows it
and its module is not blocked.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections.abc import Callable
from typing import Any

import torch

from . import _allowlist, _pickle_check, _registry
from ._errors import FormatError, UnsafeGlobalError


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
    """The skeleton of `obj`; `ref(tensor)` gives each tensor's persistent id."""
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
        if module in _allowlist.BLOCKED_MODULES:  # torch's words, as callers match on them
            raise UnsafeGlobalError(
                f"Weights only load failed. Trying to load unsupported GLOBAL {full} whose "
                f"module {module} is blocked."
            )
        found = _allowlist.lookup(full)
        if found is None:
            shown = name if module == "builtins" else full  # as torch shows it
            raise UnsafeGlobalError(
                f"Weights only load failed. Unsupported global: GLOBAL {shown} was not an "
                f"allowed global by default. Please use `serializer.add_safe_globals([{name}])` "
                f"or the `serializer.safe_globals([{name}])` context manager (or torch's, of the "
                f"same names) to allowlist this global if you trust this class/function, or "
                f"load with weights_only=False if you trust the whole stream."
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
    _pickle_check.check(data, _registry.codec_global)
    unpickler = RestrictedUnpickler(io.BytesIO(data), **pickle_load_args)
    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    try:
        return unpickler.load()
    except (UnsafeGlobalError, FormatError):
        raise
    except Exception as e:  # hostile bytes make the C unpickler raise anything
        raise FormatError(f"malformed skeleton: {type(e).__name__}: {e}") from e
