"""What of the CUDA backend runs without a GPU: import, configuration, clear refusals."""

from __future__ import annotations

import io

import pytest
import torch

import serializer
from testing import forge


def test_module_imports_without_a_gpu() -> None:
    from serializer.backends import cuda

    assert hasattr(cuda.BACKEND, "read_many") and hasattr(cuda.BACKEND, "write_many")


def test_configure_staging_validates_and_applies() -> None:
    from serializer._ring import staging_config

    serializer.configure_staging(slots=2, chunk_bytes=1 << 20)
    try:
        assert staging_config().total_bytes == 2 << 20
        with pytest.raises(ValueError):
            serializer.configure_staging(slots=0)
    finally:
        serializer.configure_staging()
    assert staging_config().total_bytes == 128 << 20


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on CPU-only machines")
@pytest.mark.parametrize("map_location", [None, "cuda", {"cpu": "cuda:1"}])
def test_cuda_locations_refused_clearly_without_cuda(map_location) -> None:
    buf = io.BytesIO()
    serializer.save({"t": torch.ones(2)}, buf)
    data = buf.getvalue()
    if map_location is None:  # forge the storage's location as cuda:0
        index = serializer.read_index(io.BytesIO(data))
        assert index.storages[0].location == "cpu"
        parts = forge.parse(data)
        ((entry, payload),) = parts.storages
        cuda = forge.unpack_storage_entry(entry)._replace(
            device_type_id=forge.DEVICE_TYPE_IDS["cuda"], device_index=0
        )
        data = parts.stream(storages=[(forge.storage_entry(*cuda), payload)])
        assert serializer.read_index(io.BytesIO(data)).storages[0].location == "cuda:0"
    with pytest.raises(serializer.DeviceError, match="CUDA"):
        serializer.load(io.BytesIO(data), map_location=map_location)
