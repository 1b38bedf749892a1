"""The skeleton's unpickling: the `weights_only` allowlist (ours and torch's) and an explicit
`pickle_module`."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import serializer
from testing.cases import MyClass, assert_same


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def test_weights_only_refuses_user_class_with_torch_message() -> None:
    buf = _bytes({"obj": MyClass(42)})
    with pytest.raises(pickle.UnpicklingError, match="not an allowed global"):
        serializer.load(buf)
    buf.seek(0)
    with pytest.raises(serializer.UnsafeGlobalError, match="add_safe_globals"):
        serializer.load(buf)


def test_explicit_pickle_module_with_weights_only_is_refused() -> None:
    with pytest.raises(RuntimeError, match="explicit pickle_module"):
        serializer.load(_bytes({}), weights_only=True, pickle_module=pickle)


def test_weights_only_false_restores_objects_with_explicit_pickle_module() -> None:
    obj = {"obj": MyClass(7), "t": torch.ones(2)}
    assert_same(serializer.load(_bytes(obj), weights_only=False, pickle_module=pickle), obj)


def test_allowlist_apis() -> None:
    obj = {"obj": MyClass(3)}
    with serializer.safe_globals([MyClass]):
        assert serializer.load(_bytes(obj)) == obj
    with pytest.raises(serializer.UnsafeGlobalError):
        serializer.load(_bytes(obj))
    serializer.add_safe_globals([MyClass])
    try:
        assert MyClass in serializer.get_safe_globals()
        assert serializer.load(_bytes(obj)) == obj
    finally:
        serializer.clear_safe_globals()
    with pytest.raises(serializer.UnsafeGlobalError):
        serializer.load(_bytes(obj))


def test_torch_allowlist_is_honoured() -> None:
    if not hasattr(torch.serialization, "safe_globals"):
        pytest.skip("this torch has no torch.serialization.safe_globals (added in 2.5)")
    obj = {"obj": MyClass(5)}
    with torch.serialization.safe_globals([MyClass]):
        assert serializer.load(_bytes(obj)) == obj
