"""What of the CUDA backend runs without a GPU: import, configuration, clear refusals."""

from __future__ import annotations

import io

import pytest
import torch

import serializer


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
    data = bytearray(buf.getvalue())
    if map_location is None:  # forge the storage's location as cuda:0
        from serializer import _format

        index = serializer.read_index(io.BytesIO(bytes(data)))
        assert index.storages[0].location == "cpu"
        start = _format.PREAMBLE_SIZE
        data[start + 10] = _format.ID_BY_DEVICE["cuda"]
        data[start + 12 : start + 16] = (0).to_bytes(4, "little")
        _reseal_header(data)
    with pytest.raises(serializer.DeviceError, match="CUDA"):
        serializer.load(io.BytesIO(bytes(data)), map_location=map_location)


def _reseal_header(data: bytearray) -> None:
    """Recompute the header checksum after editing the header in place."""
    import struct

    from serializer import _format

    pre = _format.unpack_preamble(bytes(data[: _format.PREAMBLE_SIZE]))
    start = _format.PREAMBLE_SIZE
    end = start + pre.storage_count * 16 + pre.tensor_table_len + pre.skeleton_len
    struct.pack_into("<Q", data, end, _format.checksum(bytes(data[start:end])))
