"""The catalog of dtype x layout edge cases every backend is tested on.

Each `Case` builds a fresh object (usually a state dict) on a given device. `assert_same`
compares a loaded object with the original bit for bit, including storage sharing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

# Every dtype the wire format knows, by name; the catalog uses those the running torch has.
FORMAT_DTYPES = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32",
    "float64", "complex32", "complex64", "complex128", "uint16", "uint32", "uint64",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
)  # fmt: skip


def available_dtypes() -> list[torch.dtype]:
    return [getattr(torch, name) for name in FORMAT_DTYPES if hasattr(torch, name)]


def make_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> torch.Tensor:
    """Deterministic contents covering every bit pattern (NaNs and infs included)."""
    gen = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (numel * size,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape).to(device)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str], Any]  # device -> object
    tags: frozenset[str] = field(default_factory=frozenset)
    weights_only: bool = True  # loads under weights_only=True

    def __repr__(self) -> str:
        return f"Case({self.name})"


def _dtype_case(dtype: torch.dtype) -> Case:
    name = str(dtype).removeprefix("torch.")
    return Case(
        f"dtype-{name}", lambda d: {"t": make_tensor((3, 5), dtype, d)}, frozenset({"dtype"})
    )


def _layout_cases() -> Iterator[Case]:
    f32 = torch.float32

    def shared(d: str) -> dict[str, torch.Tensor]:
        base = make_tensor((6, 8), f32, d, seed=1)
        return {"base": base, "row": base[2], "col": base[:, 3], "block": base[1:4, 2:6]}

    def same_twice(d: str) -> dict[str, torch.Tensor]:
        t = make_tensor((4,), torch.int64, d, seed=2)
        return {"a": t, "b": t}

    def parameter(d: str) -> dict[str, Any]:
        return {
            "w": torch.nn.Parameter(make_tensor((2, 3), f32, d, seed=3)),
            "frozen": torch.nn.Parameter(make_tensor((3,), f32, d, seed=4), requires_grad=False),
            "grad": make_tensor((2,), f32, d, seed=5).requires_grad_(True),
        }

    def channels_last(d: str) -> dict[str, torch.Tensor]:
        t = make_tensor((2, 3, 4, 5), f32, d, seed=6).contiguous(memory_format=torch.channels_last)
        return {"t": t}

    layouts: dict[str, Callable[[str], Any]] = {
        "scalar": lambda d: {"t": make_tensor((), torch.float64, d)},
        "zero-size": lambda d: {"t": torch.zeros(0, 10, device=d)},
        "zero-size-middle": lambda d: {"t": torch.zeros(3, 0, 2, dtype=torch.int32, device=d)},
        "one-element": lambda d: {"t": make_tensor((1,), torch.int16, d)},
        "transposed": lambda d: {"t": make_tensor((5, 7), f32, d).t()},
        "non-contiguous": lambda d: {"t": make_tensor((4, 6, 5), f32, d).permute(2, 0, 1)},
        "expanded": lambda d: {"t": make_tensor((3, 1), f32, d).expand(3, 4)},
        "channels-last": channels_last,
        "offset-view": lambda d: {"t": torch.arange(10, dtype=torch.float64, device=d)[2:]},
        "strided-slice": lambda d: {"t": make_tensor((6, 9), f32, d)[1::2, ::3]},
        "shared-storage": shared,
        "same-tensor-twice": same_twice,
        "parameters": parameter,
        "large": lambda d: {"t": make_tensor((1 << 21,), f32, d)},  # 8 MiB: the chunked path
        "many-small": lambda d: {f"t{i}": make_tensor((i % 7 + 1,), f32, d, i) for i in range(300)},
        "ordered-dict": lambda d: OrderedDict(
            b=make_tensor((2,), f32, d), a=torch.ones(1, device=d)
        ),
        "nested": lambda d: {
            "model": {"layer": [make_tensor((2, 2), f32, d), {"bias": make_tensor((2,), f32, d)}]},
            "step": 7,
            "meta": ("x", 1.5, None, True, torch.Size([2, 3]), torch.float16, torch.device("cpu")),
        },
        "conj": lambda d: {"t": make_tensor((3,), torch.complex64, d).conj()},
        "python-values": lambda d: {
            "s": "héllo wörld ✓",
            "b": b"\x00\xffbytes",
            "n": [1, -2, 3.25, float("inf"), None, True, 2**70, complex(1, 2)],
            "set": {1, 2},
            "empty": {},
        },
    }
    for name, build in layouts.items():
        yield Case(f"layout-{name}", build, frozenset({"layout"}))


class MyClass:
    """A user class: loads only with weights_only=False or on the allowlist."""

    def __init__(self, a: int) -> None:
        self.a = a

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MyClass) and self.a == other.a

    def __hash__(self) -> int:
        return hash(self.a)


def _torch_suite_cases() -> Iterator[Case]:
    """Every case of PyTorch's test/distributed/test_serialization.py (besides DTensor)."""
    cases: dict[str, Callable[[str], Any]] = {
        "scalar": lambda d: {"scalar": torch.tensor(42, dtype=torch.int32, device=d)},
        "strided": lambda d: {
            "strided": torch.arange(16, dtype=torch.float32, device=d).reshape(4, 4)[::2, ::2]
        },
        "offset": lambda d: {
            "offset": torch.arange(10, dtype=torch.float64, device=d)[2:],
            "strided": torch.arange(10, dtype=torch.float64, device=d)[2::2],
        },
        "nested": lambda d: {
            "nested": {
                "tensor1": torch.tensor([1, 2, 3], dtype=torch.int32, device=d),
                "tensor2": torch.tensor([[1.5, 2.5], [3.5, 4.5]], dtype=torch.float64, device=d),
            }
        },
        "various-dtypes": lambda d: {
            "float32": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32, device=d),
            "int16": torch.tensor([1, 2, 3], dtype=torch.int16, device=d),
            "bool": torch.tensor([True, False, True], dtype=torch.bool, device=d),
            "uint16": torch.tensor([1, 0, 1], dtype=torch.uint8, device=d).to(torch.uint16),
        },
        "empty": lambda d: {"empty": torch.zeros(0, 10, device=d)},
        "str-utf8": lambda d: {"obj": "Ü"},
    }
    for name, build in cases.items():
        yield Case(f"torch-{name}", build, frozenset({"torch-suite"}))
    yield Case(
        "torch-python-object",
        lambda d: {"obj": MyClass(42)},
        frozenset({"torch-suite"}),
        weights_only=False,
    )


def catalog() -> list[Case]:
    """Every case, for the running torch."""
    return [
        *(_dtype_case(d) for d in available_dtypes()),
        *_layout_cases(),
        *_torch_suite_cases(),
    ]


# ---------------------------------------------------------------------------- comparison


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).cpu()


def assert_same(actual: Any, expected: Any, path: str = "obj") -> None:
    """Structural, bit-exact equality, plus the same storage sharing among tensors."""
    groups_a: dict[int, list[str]] = {}
    groups_e: dict[int, list[str]] = {}
    _compare(actual, expected, path, groups_a, groups_e)
    shared_a = sorted(sorted(v) for v in groups_a.values())
    shared_e = sorted(sorted(v) for v in groups_e.values())
    assert shared_a == shared_e, f"storage sharing differs: {shared_a} != {shared_e}"


def _compare(a: Any, e: Any, path: str, ga: dict[int, list[str]], ge: dict[int, list[str]]) -> None:
    assert type(a) is type(e), f"{path}: type {type(a).__name__} != {type(e).__name__}"
    if isinstance(e, torch.Tensor):
        assert a.dtype == e.dtype, f"{path}: dtype {a.dtype} != {e.dtype}"
        assert a.shape == e.shape, f"{path}: shape {a.shape} != {e.shape}"
        assert a.requires_grad == e.requires_grad, f"{path}: requires_grad differs"
        if e.is_conj() or a.is_conj():  # a conjugate view may be saved resolved
            assert same_bits(a.resolve_conj(), e.resolve_conj()), f"{path}: values differ"
            return
        assert a.stride() == e.stride(), f"{path}: stride {a.stride()} != {e.stride()}"
        assert a.storage_offset() == e.storage_offset(), f"{path}: storage offset differs"
        assert torch.equal(_storage_bytes(a), _storage_bytes(e)), f"{path}: bytes differ"
        ga.setdefault(a.untyped_storage().data_ptr(), []).append(path)
        ge.setdefault(e.untyped_storage().data_ptr(), []).append(path)
    elif isinstance(e, dict):
        assert list(a.keys()) == list(e.keys()), f"{path}: keys {list(a)} != {list(e)}"
        for k in e:
            _compare(a[k], e[k], f"{path}[{k!r}]", ga, ge)
    elif isinstance(e, (list, tuple)):
        assert len(a) == len(e), f"{path}: length {len(a)} != {len(e)}"
        for i, (x, y) in enumerate(zip(a, e, strict=True)):
            _compare(x, y, f"{path}[{i}]", ga, ge)
    elif isinstance(e, float) and math.isnan(e):
        assert math.isnan(a), f"{path}: {a!r} != nan"
    else:
        assert a == e, f"{path}: {a!r} != {e!r}"


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values bit for bit (NaNs compare equal)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The values of `t` as raw bytes, for any dtype and layout."""
    return t.detach().cpu().contiguous().view(torch.uint8)
