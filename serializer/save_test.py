"""save: what it refuses, and how views and shared storages are written."""

from __future__ import annotations

import io

import pytest
import torch

import serializer


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def test_unsupported_tensors_are_refused_at_save() -> None:
    cases = {
        "sparse": torch.eye(3).to_sparse(),
        "quantized": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8),
        "meta": torch.empty(2, device="meta"),
        "nested": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
        "storage": torch.ones(2).untyped_storage(),
    }
    for name, value in cases.items():
        with pytest.raises(serializer.UnsupportedError):
            serializer.save({name: value}, io.BytesIO())


def test_views_of_one_storage_as_different_sizes_are_refused() -> None:
    t = torch.zeros(4)
    with pytest.raises(serializer.UnsupportedError, match="element sizes"):
        serializer.save({"a": t, "b": t.view(torch.uint8)}, io.BytesIO())


def test_subclass_refused() -> None:
    class Sub(torch.Tensor):
        pass

    with pytest.raises(serializer.UnsupportedError, match="subclass"):
        serializer.save({"t": torch.ones(2).as_subclass(Sub)}, io.BytesIO())


def test_text_stream_refused() -> None:
    with pytest.raises(TypeError, match="binary"):
        serializer.save({}, io.StringIO())


def test_save_writes_whole_base_storage_once() -> None:
    base = torch.zeros(1000)
    one = _bytes({"a": base[::2], "b": base[1::2]}).getvalue()
    two = _bytes({"a": base.clone()}).getvalue()
    assert abs(len(one) - len(two)) < 200  # one storage of 4000 bytes either way
