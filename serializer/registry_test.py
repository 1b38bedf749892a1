"""The registry: device backends found from the format's device table, and tensor-subclass
codecs plugged in through `serializer.register_codec`."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
import torch

import serializer
from serializer import _format, _registry


def test_every_device_type_of_the_format_has_a_backend() -> None:
    for device_type in _format.ID_BY_DEVICE:
        backend = _registry.find_backend(device_type)
        assert backend is not None
        for method in ("place", "write_many", "empty", "read_many"):
            assert callable(getattr(backend, method))


def test_a_device_type_the_format_lacks_has_no_backend() -> None:
    assert _registry.find_backend("meta") is None
    with pytest.raises(serializer.UnsupportedError, match="'meta' are not supported"):
        _registry.backend_for("meta")
    with pytest.raises(serializer.UnsupportedError, match="device type 'meta'"):
        serializer.save(torch.empty(2, device="meta"), io.BytesIO())


def test_cpu_backend_places_on_the_cpu() -> None:
    cpu = _registry.backend_for("cpu")
    assert cpu.place(torch.device("cpu")) == torch.device("cpu")


class Scaled(torch.Tensor):
    """A toy tensor subclass: a tensor with a scale, saved by `_ScaledCodec`."""

    scale: float

    @staticmethod
    def __new__(cls, data: torch.Tensor, scale: float) -> Scaled:
        t = torch.Tensor._make_subclass(cls, data)
        t.scale = scale
        return t


def rebuild_scaled(data: Any, scale: Any) -> Any:
    if isinstance(data, serializer.TensorRef):  # an outline: no data
        return data
    if type(scale) is not float:
        raise serializer.FormatError("a Scaled tensor's scale is not a float")
    return Scaled(data, scale)


class _ScaledCodec:
    @property
    def safe_globals(self) -> Mapping[str, Any]:
        return {f"{__name__}.rebuild_scaled": rebuild_scaled}

    def handles(self, cls: type) -> bool:
        return cls is Scaled

    def reduce(self, obj: Any) -> tuple[Any, tuple[Any, ...]]:
        return rebuild_scaled, (obj.as_subclass(torch.Tensor).detach(), float(obj.scale))

    def local_tensor(self, obj: Any) -> torch.Tensor:
        local: torch.Tensor = obj.as_subclass(torch.Tensor)
        return local


def test_a_registered_codec_saves_and_loads_its_subclass_under_weights_only() -> None:
    value = Scaled(torch.arange(6.0).reshape(2, 3), 0.5)
    buf = io.BytesIO()
    with pytest.raises(serializer.UnsupportedError, match="subclass Scaled"):
        serializer.save({"w": value}, buf)  # no codec yet
    codec: serializer.TensorCodec = _ScaledCodec()
    serializer.register_codec(codec)
    try:
        buf = io.BytesIO()
        serializer.save({"w": value, "plain": torch.ones(2)}, buf)
        buf.seek(0)
        loaded = serializer.load(buf)  # weights_only: the codec's global is allowed
        assert type(loaded["w"]) is Scaled and loaded["w"].scale == 0.5
        assert torch.equal(loaded["w"].as_subclass(torch.Tensor), torch.arange(6.0).reshape(2, 3))
        buf.seek(0)
        assert serializer.read_index(buf).keys() == ["w", "plain"]  # the outline passes refs
        into = {"w": Scaled(torch.zeros(2, 3), 0.5), "plain": torch.zeros(2)}
        buf.seek(0)
        serializer.load_into(into, buf)  # writes into the codec's local tensor
        assert torch.equal(into["w"].as_subclass(torch.Tensor), torch.arange(6.0).reshape(2, 3))
    finally:
        _registry._codecs.remove(codec)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="rebuild_scaled"):
        serializer.load(buf)  # the codec's global is allowed only while it is registered


_DTENSOR_CODEC_CHECK = """
import sys
import serializer
from serializer import _registry
assert "serializer.distributed" not in sys.modules, "the core imported the client package"
try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch 2.4
    from torch.distributed._tensor import DTensor
codec = _registry.codec_for(DTensor)
assert codec is not None and "serializer.distributed" in sys.modules
name = "serializer.backends.distributed._rebuild_dtensor"
assert _registry.codec_global(name) is codec.safe_globals[name]
assert _registry.codec_for(torch.Tensor) is None
assert _registry.codec_for(torch.nn.Parameter) is None
"""


def test_the_dtensor_codec_is_found_without_an_import_by_the_caller() -> None:
    subprocess.run([sys.executable, "-c", "import torch\n" + _DTENSOR_CODEC_CHECK], check=True)
