"""Side by side with torch.load: one catalog of benign and hostile objects, each saved by
torch.save and by serializer.save, and loaded by torch.load(weights_only=True) and by
serializer.load; the outcomes must agree (the same value, or an UnpicklingError for the
same reason), except where this library is deliberately stricter or more permissive, which
docs/SECURITY.md lists and these cases assert."""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import serializer


class Cfg:
    """A plain user class (pickled by reference, as __main__ or module classes are)."""

    def __init__(self, x: int = 0) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return type(other) is Cfg and other.x == self.x


class R:
    """Pickles as the call ``f(*a)``."""

    def __init__(self, f: Any, a: tuple[Any, ...]) -> None:
        self.f, self.a = f, a

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.f, self.a)

    def __call__(self, *a: Any) -> None:
        pass


def _getattr_walk() -> Any:
    g = R(getattr, (R(getattr, (Cfg, "__init__")), "__globals__"))
    return R(R(getattr, (R(R(getattr, (g, "get")), ("os",)), "getpid")), ())


SAME = "same"  # torch and we agree
STRICTER = "stricter"  # torch loads it; we refuse (docs/SECURITY.md says why)
MORE = "more"  # we load it; torch may refuse (harmless types torch's list lacks)


@dataclass
class Case:
    name: str
    make: Callable[[], Any]
    expect: str = SAME
    allow: list[Any] = field(default_factory=list)


CASES = [
    Case("tensors", lambda: {"w": torch.arange(6.0).reshape(2, 3), "i": torch.arange(3)}),
    Case("views", lambda: (lambda b: {"b": b, "v": b[1:, ::2]})(torch.arange(12.0).reshape(3, 4))),
    Case("parameter", lambda: {"p": torch.nn.Parameter(torch.ones(2))}),
    Case(
        "scalars",
        lambda: {"i": 1, "f": 2.5, "s": "x", "b": b"y", "n": None, "t": True, "big": 10**30},
    ),
    Case("containers", lambda: {"l": [1, [2, (3, 4, 5, 6)]], "t": (1,), "set": {1, 2}}),
    Case("ordered_dict", lambda: collections.OrderedDict(a=torch.ones(1), b=2)),
    Case("counter", lambda: collections.Counter(a=3)),
    Case("complex", lambda: {"c": 1 + 2j}),
    Case("bytearray", lambda: {"b": bytearray(b"abc")}),
    Case("torch_types", lambda: [torch.Size([2, 3]), torch.device("cpu"), torch.float16]),
    Case("frozenset", lambda: {"f": frozenset({1, 2})}, MORE),
    Case("slice", lambda: {"s": slice(1, 5, 2)}, MORE),
    Case("user_class", lambda: {"c": Cfg(3)}),
    Case("user_class_allowed", lambda: {"c": Cfg(3)}, allow=[Cfg]),
    Case("os_system", lambda: R(os.system, ("true",))),
    Case("os_system_allowed", lambda: R(os.system, ("true",)), allow=[os.system]),
    Case("execv_allowed", lambda: R(os.execv, ("/bin/true", ["true"])), allow=[os.execv]),
    Case("eval", lambda: R(eval, ("1",))),
    Case("getattr_walk", _getattr_walk, allow=[getattr, Cfg]),
    Case("tensor_constructor", lambda: {"t": R(torch.Tensor, (5,))}, STRICTER),
    Case("bytearray_of_size", lambda: {"b": R(bytearray, (5,))}, STRICTER),
]


def _outcome(load: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", the object), ("refused", the message) for an UnpicklingError, or ("error", the
    exception) for any other error of ours."""
    try:
        return "ok", load()
    except pickle.UnpicklingError as e:
        return "refused", str(e)
    except serializer.SerializerError as e:
        return "error", e


def _reason(message: str) -> list[str]:
    """The first words of why a weights_only load refused, in torch's or our message."""
    starts = [message.find(m) for m in ("Unsupported global", "Trying to", "Can only")]
    start = min((s for s in starts if s >= 0), default=0)
    words = message[start:].split()[:4]
    if words[:3] == ["Unsupported", "global:", "GLOBAL"]:  # torch 2.4 keeps "builtins."
        words[3] = words[3].removeprefix("builtins.")
    return words


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and type(a) is type(b)
            and a.dtype == b.dtype
            and torch.equal(a, b)
            and a.stride() == b.stride()
            and a.requires_grad == b.requires_grad
        )
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return type(a) is type(b) and bool(a == b)


def _allowing(case: Case) -> Any:
    if not case.allow:
        return _Null()
    manager = getattr(torch.serialization, "safe_globals", None)
    if manager is None:  # torch 2.4: only add_safe_globals
        pytest.skip("this torch has no torch.serialization.safe_globals")
    return manager(case.allow)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("parity", CASES, ids=[c.name for c in CASES])
def test_same_outcome_as_torch_load(parity: Case) -> None:
    case = parity
    obj = case.make()
    theirs_buf, ours_buf = io.BytesIO(), io.BytesIO()
    torch.save(obj, theirs_buf)
    serializer.save(obj, ours_buf)
    with _allowing(case):  # torch's own allowlist API: serializer honours it too
        theirs = _outcome(lambda: torch.load(io.BytesIO(theirs_buf.getvalue()), weights_only=True))
        ours = _outcome(lambda: serializer.load(io.BytesIO(ours_buf.getvalue())))
    if case.expect == STRICTER:  # torch loads these (2.4 refuses some); we never do
        assert ours[0] in ("refused", "error"), ours
        return
    if case.expect == MORE:
        assert ours[0] == "ok" and _equal(ours[1], obj)
        return
    if theirs[0] == "refused" and ours[0] == "ok":
        # Older torch (2.4, 2.5) lacks harmless globals its later versions allow and we allow
        # on every version: the same value loads, and torch names one of them.
        assert _refused_global(theirs[1]) in ALLOWED_ON_EVERY_VERSION, theirs[1]
        assert _equal(ours[1], obj)
        return
    assert ours[0] == theirs[0], f"torch: {theirs}, ours: {ours}"
    if ours[0] == "ok":
        assert _equal(ours[1], theirs[1])
        assert _equal(ours[1], obj)
    elif "is blocked" in ours[1] and not _torch_blocks_modules():
        assert _refused_global(theirs[1]) in ours[1]  # torch < 2.5 has no blocklist
    else:
        assert _reason(ours[1]) == _reason(theirs[1]), f"torch: {theirs[1]}\nours: {ours[1]}"


# Globals this library allows on every torch version (docs/SECURITY.md), which torch's own
# allowlist lacks in some versions.
ALLOWED_ON_EVERY_VERSION = {
    "builtins.set", "builtins.frozenset", "builtins.complex", "builtins.slice",
    "builtins.bytearray", "builtins.bytes", "_codecs.encode", "collections.Counter",
    "collections.OrderedDict",
}  # fmt: skip


def _refused_global(message: str) -> str:
    """The full name of the global torch's message says it refused."""
    match = re.search(r"GLOBAL (\S+) (?:was not|whose)", message)
    assert match is not None, message
    name = match.group(1)
    return name if "." in name else f"builtins.{name}"


def _torch_blocks_modules() -> bool:
    rules = getattr(torch, "_weights_only_unpickler", None)
    return bool(getattr(rules, "_blocklisted_modules", None))


def test_weights_only_none_is_the_safe_default_as_in_torch() -> None:
    buf = io.BytesIO()
    serializer.save({"c": Cfg(1)}, buf)
    with pytest.raises(serializer.UnsafeGlobalError, match="Unsupported global"):
        serializer.load(io.BytesIO(buf.getvalue()), weights_only=None)
    loaded = serializer.load(io.BytesIO(buf.getvalue()), weights_only=None, pickle_module=pickle)
    assert loaded == {"c": Cfg(1)}  # an explicit pickle_module means weights_only=False
