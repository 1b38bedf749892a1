"""map_location: every form torch accepts, and a device that is not there."""

from __future__ import annotations

import io

import pytest
import torch

import serializer
from testing.cases import assert_same, make_tensor


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def test_map_location_cpu_forms() -> None:
    obj = {"t": make_tensor((3,), torch.float32)}
    for loc in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda s, loc: s, lambda s, loc: None):
        assert_same(serializer.load(_bytes(obj), map_location=loc), obj)


def test_map_location_callable_sees_location_and_storage() -> None:
    seen = []

    def where(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        seen.append((location, storage.nbytes()))
        return storage

    serializer.load(
        _bytes({"a": torch.ones(3), "b": torch.ones(2, dtype=torch.int64)}), map_location=where
    )
    assert seen == [("cpu", 12), ("cpu", 16)]


def test_cuda_location_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="map_location"):
        serializer.load(_bytes({"t": torch.ones(1)}), map_location="cuda:0")
