"""load_into: in place, through views and shared storages, and its checks of the destination."""

from __future__ import annotations

import io

import pytest
import torch

import serializer
from testing.cases import make_tensor, same_bits


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def test_load_into_in_place_without_copies() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    source = {k: v.clone().uniform_() for k, v in model.state_dict().items()}
    dest = model.state_dict()
    ptrs = {k: v.data_ptr() for k, v in dest.items()}
    result = serializer.load_into(dest, _bytes(source))
    assert result == serializer.LoadResult([], [])
    for k, v in model.state_dict().items():
        assert v.data_ptr() == ptrs[k]
        assert torch.equal(v, source[k])


def test_load_into_views_and_shared_storage() -> None:
    base = make_tensor((6, 8), torch.float32)
    source = {"base": base, "row": base[2], "block": base[1:4, 2:6], "t": base.t()}
    dest = {k: torch.zeros_like(v) for k, v in source.items()}
    serializer.load_into(dest, _bytes(source))
    for k in source:
        assert same_bits(dest[k], source[k]), k


def test_load_into_lazy_conjugate_and_negative_views() -> None:
    """Their memory holds other values than they read as: the bytes must not go straight in."""
    values = torch.tensor([1 + 2j, 3 - 1j, -0.5j], dtype=torch.complex64)
    views = {
        "conj": lambda c: c.conj(),
        "neg": lambda c: c.conj().imag,  # a real view with the negative bit
    }
    for name, make in views.items():
        dest = make(torch.zeros(3, dtype=torch.complex64))
        assert dest.is_conj() or dest.is_neg()
        want = values if dest.is_complex() else values.imag.clone()
        serializer.load_into({"v": dest}, _bytes({"v": want}))
        assert torch.equal(dest, want), name
        dest.zero_()
        twin = torch.zeros_like(want)
        serializer.load_into({"v": dest, "twin": twin}, _bytes({"v": want, "twin": want.view(3)}))
        assert torch.equal(dest, want) and torch.equal(twin, want), f"{name}, shared storage"


def test_load_into_checks_keys_shapes_dtypes() -> None:
    buf = _bytes({"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(serializer.MismatchError, match="missing.*'c'.*'b'"):
        serializer.load_into({"a": torch.zeros(2), "c": torch.zeros(1)}, buf)
    with pytest.raises(serializer.MismatchError, match="'a'.*float32 \\[2\\].*float64 \\[2\\]"):
        serializer.load_into(
            {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(3)},
            _bytes({"a": torch.ones(2), "b": torch.ones(3)}),
        )
    with pytest.raises(serializer.MismatchError, match="\\[3\\].*\\[4\\]"):
        serializer.load_into(
            {"a": torch.zeros(2), "b": torch.zeros(4)},
            _bytes({"a": torch.ones(2), "b": torch.ones(3)}),
        )
    dest = {"a": torch.zeros(2)}
    result = serializer.load_into(
        dest, _bytes({"a": torch.ones(2), "b": torch.ones(3)}), strict=False
    )
    assert result.unexpected_keys == ["b"] and torch.equal(dest["a"], torch.ones(2))


def test_load_into_a_module_and_with_cast() -> None:
    """A module was walked by its attributes (`_parameters.weight` missing, no hint); an fp32
    stream was refused for bf16 tensors, where load_state_dict casts."""
    torch.manual_seed(0)
    source = torch.nn.Linear(3, 2)
    buf = io.BytesIO()
    serializer.save(source.state_dict(), buf)
    data = buf.getvalue()
    target = torch.nn.Linear(3, 2)
    assert serializer.load_into(target, io.BytesIO(data)) == ([], [])
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    half = torch.nn.Linear(3, 2).to(torch.bfloat16)
    with pytest.raises(serializer.MismatchError, match="pass cast=True"):
        serializer.load_into(half, io.BytesIO(data))
    serializer.load_into(half, io.BytesIO(data), cast=True)
    assert torch.equal(half.weight, source.weight.detach().to(torch.bfloat16))
    with pytest.raises(serializer.MismatchError, match="pass the module"):
        serializer.load_into(vars(torch.nn.Linear(3, 2)), io.BytesIO(data))


def test_cast_never_reinterprets_bytes_of_an_equal_size_dtype() -> None:
    """float16 and bfloat16 have one size: a raw read would load wrong values."""
    buf = io.BytesIO()
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.float16)
    serializer.save({"t": values}, buf)
    dest = {"t": torch.zeros(3, dtype=torch.bfloat16)}
    serializer.load_into(dest, io.BytesIO(buf.getvalue()), cast=True)
    assert torch.equal(dest["t"], values.to(torch.bfloat16))


def test_bool_bytes_arrive_as_stored_on_every_path() -> None:
    # A bool whose byte is neither 0 nor 1 (torch keeps such bytes, e.g. a uint8 tensor
    # viewed as bool): load gives the byte as stored; load_into's copy path (a view that is
    # not its whole storage) gave 1, as copy_ converts.
    raw = torch.tensor([0xA4, 0, 1, 2], dtype=torch.uint8)
    flags = raw.view(torch.bool)[:2]  # a view of part of its storage: the copy path
    data = io.BytesIO()
    serializer.save({"flags": flags}, data)
    loaded = serializer.load(io.BytesIO(data.getvalue()))["flags"]
    dest = {"flags": torch.zeros(2, dtype=torch.bool)}
    serializer.load_into(dest, io.BytesIO(data.getvalue()))
    assert loaded.view(torch.uint8).tolist() == [0xA4, 0]
    assert dest["flags"].view(torch.uint8).tolist() == [0xA4, 0]
