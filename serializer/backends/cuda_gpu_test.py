"""The GPU suite: the catalog, map_location, in-place loads and bounded staging on CUDA.

Every test here is marked ``gpu`` and skips where torch.cuda.is_available() is False; Bazel
tags this file ``gpu`` (run with --config=gpu) and shards it.
"""

from __future__ import annotations

import io

import pytest
import torch

import serializer
from testing.cases import Case, assert_same, make_tensor, same_bits

pytestmark = pytest.mark.gpu


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def _cpu(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    return obj


def test_catalog_on_cuda(case: Case, transport) -> None:
    obj = case.build("cuda")
    loaded = transport(obj, lambda f: serializer.load(f, weights_only=case.weights_only))
    assert_same(loaded, obj)
    for t in _tensors(loaded):
        assert t.device.type == "cuda"


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def test_cuda_save_loads_on_cpu_bit_exact() -> None:
    obj = {"a": make_tensor((1000, 3), torch.float32), "b": make_tensor((7,), torch.int8)}
    gpu = serializer.load(_bytes({k: v.cuda() for k, v in obj.items()}), map_location="cpu")
    assert_same(gpu, obj)


@pytest.mark.parametrize(
    "map_location",
    ["cpu", torch.device("cpu"), {"cuda:0": "cpu"}, lambda s, loc: s],
    ids=["str", "device", "dict", "callable"],
)
def test_cuda_to_cpu(map_location) -> None:
    obj = {"w": make_tensor((64, 64), torch.bfloat16, "cuda")}
    loaded = serializer.load(_bytes(obj), map_location=map_location)
    assert loaded["w"].device.type == "cpu"
    assert same_bits(loaded["w"], obj["w"].cpu())


@pytest.mark.parametrize(
    "map_location",
    ["cuda", "cuda:0", torch.device("cuda", 0), {"cpu": "cuda:0"}, lambda s, loc: s.cuda(0)],
    ids=["str", "str-index", "device", "dict", "callable"],
)
def test_cpu_to_cuda(map_location) -> None:
    obj = {"w": make_tensor((33, 5), torch.float16), "v": make_tensor((3,), torch.float32)[1:]}
    loaded = serializer.load(_bytes(obj), map_location=map_location)
    assert loaded["w"].device == torch.device("cuda", 0)
    assert_same(_cpu(loaded), obj)
    assert loaded["v"].untyped_storage().nbytes() == 12


def test_cuda_n_to_cuda_m() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    obj = {
        "a": make_tensor((100,), torch.float32, "cuda:1"),
        "b": make_tensor((5,), torch.int64, "cuda:0"),
    }
    loaded = serializer.load(_bytes(obj), map_location={"cuda:1": "cuda:0"})
    assert loaded["a"].device == torch.device("cuda", 0)
    assert loaded["b"].device == torch.device("cuda", 0)
    restored = serializer.load(_bytes(obj))
    assert restored["a"].device == torch.device("cuda", 1)
    assert_same(_cpu(restored), _cpu(obj))


def test_load_into_cuda_in_place() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8)).cuda()
    source = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    serializer.load_into(model.state_dict(), _bytes({k: v.cpu() for k, v in source.items()}))
    for k, v in model.state_dict().items():
        assert v.data_ptr() == ptrs[k] and torch.equal(v, source[k])


def test_tensor_larger_than_the_ring() -> None:
    serializer.configure_staging(slots=2, chunk_bytes=1 << 20)
    try:
        big = make_tensor((5 << 20,), torch.uint8, "cuda")  # 5 MiB through 2 x 1 MiB
        tail = make_tensor((1 << 20,), torch.float32, "cuda")[3:]
        obj = {"big": big, "tail": tail}
        assert_same(serializer.load(_bytes(obj)), obj)
    finally:
        serializer.configure_staging()


def test_pinned_memory_stays_within_the_ring() -> None:
    stats = getattr(torch.cuda.memory, "host_memory_stats", None)
    reset = getattr(torch.cuda.memory, "reset_peak_host_memory_stats", None)
    if stats is None or reset is None:
        pytest.skip("this torch has no host (pinned) memory statistics")
    serializer.configure_staging(slots=3, chunk_bytes=4 << 20)
    try:
        obj = {f"t{i}": make_tensor((16 << 20,), torch.uint8, "cuda", seed=i) for i in range(4)}
        reset()
        before = stats().get("allocated_bytes.current", 0)
        buf = _bytes(obj)
        serializer.load(buf)
        peak = stats().get("allocated_bytes.peak", 0) - before
        assert 0 < peak <= 2 * 3 * (4 << 20), f"pinned peak {peak} bytes for a 64 MiB state dict"
    finally:
        serializer.configure_staging()


def test_pending_work_on_the_current_stream_is_saved_finished() -> None:
    t = torch.zeros(32 << 20, device="cuda")
    for _ in range(20):
        t.add_(1)  # queued, not finished, when save starts
    loaded = serializer.load(_bytes({"t": t}), map_location="cpu")
    assert bool((loaded["t"] == 20).all())


def test_loaded_tensors_are_ready_on_the_current_stream() -> None:
    obj = {"t": torch.arange(1 << 22, dtype=torch.float32)}
    loaded = serializer.load(_bytes(obj), map_location="cuda")
    assert float(loaded["t"].sum()) == float(obj["t"].double().sum())


def test_torch_streaming_interop_on_cuda() -> None:
    _serialization = pytest.importorskip("torch.distributed._serialization")
    obj = {
        "scalar": torch.tensor(42.0, device="cuda"),
        "w": make_tensor((4, 4), torch.float32, "cuda"),
    }
    buf = io.BytesIO()
    _serialization._streaming_save(obj, buf)
    buf.seek(0)
    loaded = serializer.load(buf)
    assert loaded["scalar"].device == torch.device("cuda", 0)
    assert_same(_cpu(loaded), _cpu(obj))
