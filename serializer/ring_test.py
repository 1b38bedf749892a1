"""The ring schedule that the CUDA backend uses, run on the CPU with copies that complete
only when waited for (as asynchronous device copies do)."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import serializer
from serializer import _records, _ring
from serializer._byteio import ByteSink, ByteSource
from serializer._records import RecordReader, RecordWriter
from serializer.backends.cpu import BACKEND as CPU


class DeferredStaging:
    """Copies run when their slot is waited on, or when `finish` is called, never earlier;
    a schedule that reads a slot before waiting, or reuses a slot with a copy pending,
    sees stale bytes or trips an assertion."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.log: list[tuple[str, int]] = []

    def _start(self, dst: torch.Tensor, src: torch.Tensor, slot: int) -> None:
        assert slot not in self.pending, f"slot {slot} reused before its copy was waited for"
        self.pending[slot] = (dst, src)  # read when the copy runs, as a device copy does
        self.log.append(("start", slot))

    to_host = _start

    def to_device(self, device: torch.Tensor, host: torch.Tensor, slot: int) -> None:
        self._start(device, host, slot)

    def wait(self, slot: int) -> None:
        if slot in self.pending:
            dst, src = self.pending.pop(slot)
            dst.copy_(src)
        self.log.append(("wait", slot))

    def finish(self) -> None:
        for slot in list(self.pending):
            self.wait(slot)


def _datas(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g) for n in sizes]


def _direct_stream(datas: list[torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    sink = ByteSink(buf)
    records = RecordWriter(sink)
    CPU.write_many(datas, records)
    records.close()
    sink.close()
    return buf.getvalue()


def _ring_stream(datas: list[torch.Tensor], slots: int, chunk: int) -> bytes:
    buf = io.BytesIO()
    sink = ByteSink(buf)
    records = RecordWriter(sink)
    buffers = [torch.empty(chunk, dtype=torch.uint8) for _ in range(slots)]
    _ring.write_through_ring(datas, records, buffers, DeferredStaging())
    records.close()
    sink.close()
    return buf.getvalue()


def _ring_read(stream: bytes, sizes: list[int], slots: int, chunk: int) -> list[torch.Tensor]:
    out = [torch.full((n,), 7, dtype=torch.uint8) for n in sizes]
    source = ByteSource(io.BytesIO(stream))
    source.expect(len(stream))
    records = RecordReader(source)
    buffers = [torch.empty(chunk, dtype=torch.uint8) for _ in range(slots)]
    jobs = [(t, i) for i, t in enumerate(out)]
    _ring.read_through_ring(jobs, records, buffers, DeferredStaging())
    records.close()
    assert source.offset == len(stream)
    return out


sizes_st = st.lists(st.sampled_from([0, 1, 2, 5, 7, 8, 9, 16, 31, 64, 100]), max_size=8)


@settings(max_examples=200, deadline=None)
@given(sizes_st, st.integers(1, 4), st.integers(1, 17))
def test_ring_writes_the_same_bytes_as_the_direct_path(sizes, slots, chunk) -> None:
    datas = _datas(sizes)
    assert _ring_stream(datas, slots, chunk) == _direct_stream(datas)


@settings(max_examples=200, deadline=None)
@given(sizes_st, st.integers(1, 4), st.integers(1, 17))
def test_ring_reads_what_the_direct_path_wrote(sizes, slots, chunk) -> None:
    datas = _datas(sizes, seed=1)
    loaded = _ring_read(_direct_stream(datas), sizes, slots, chunk)
    for got, want in zip(loaded, datas, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("hash_thread", [True, False], ids=["hash-thread", "hash-inline"])
def test_large_record_through_many_slots_with_big_chunks(
    hash_thread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks past the hash-thread threshold exercise the asynchronous hashing."""
    monkeypatch.setattr(_records, "HASH_THREAD", hash_thread)
    sizes = [(3 << 20) + 5, 0, 1 << 20, 12345]
    datas = _datas(sizes, seed=2)
    stream = _ring_stream(datas, 2, 1 << 20)
    assert stream == _direct_stream(datas)
    for got, want in zip(_ring_read(stream, sizes, 3, 1 << 20), datas, strict=True):
        assert torch.equal(got, want)


def test_ring_detects_corruption_and_truncation() -> None:
    sizes = [40, 17]
    stream = bytearray(_direct_stream(_datas(sizes)))
    with pytest.raises(serializer.TruncatedError, match="storage 1"):
        _ring_read(bytes(stream[:-3]), sizes, 2, 8)
    stream[45] ^= 1  # inside storage 1's payload (storage 0 is 40 + 8 bytes)
    with pytest.raises(serializer.ChecksumError, match="storage 0|storage 1"):
        _ring_read(bytes(stream), sizes, 2, 8)


def test_save_copies_stay_ahead_by_the_ring_size() -> None:
    staging = DeferredStaging()
    datas = _datas([10] * 6)
    buffers = [torch.empty(4, dtype=torch.uint8) for _ in range(3)]
    _ring.write_through_ring(datas, RecordWriter(ByteSink(io.BytesIO())), buffers, staging)
    starts = [i for i, (op, _) in enumerate(staging.log) if op == "start"]
    first_wait = next(i for i, (op, _) in enumerate(staging.log) if op == "wait")
    assert starts[:3] == [0, 1, 2] and first_wait == 3  # three copies in flight before a write


def test_ring_config_bounds() -> None:
    config = _ring.RingConfig(slots=3, chunk_bytes=1 << 20)
    assert config.total_bytes == 3 << 20
    small = _ring.ring_buffers(config, largest=1000, pin=False)
    assert [b.numel() for b in small] == [1000] * 3
    with pytest.raises(ValueError):
        _ring.RingConfig(slots=0)


def test_runs_groups_consecutive_devices() -> None:
    cpu, meta = torch.device("cpu"), torch.device("meta")
    got = list(_ring.runs([cpu, cpu, None, meta, cpu]))
    assert got == [(cpu, range(0, 2)), (None, range(2, 3)), (meta, range(3, 4)), (cpu, range(4, 5))]
