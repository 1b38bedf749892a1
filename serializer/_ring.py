"""Staging storages through a small ring of host buffers, for devices whose memory the
stream cannot read or write directly (CUDA).

The schedule is device-independent and lives here, so it is tested on CPU machines with
synchronous copies; a device backend supplies only the copy and wait operations.

Save: chunk j of the run's storages is copied into slot j % K up to K chunks ahead; chunk j is
written (and hashed) once its copy is done, and its slot then takes chunk j + K. Load: chunk
j is read into slot j % K once that slot's previous copy to the device and its hash are done,
then copied to the device while the next chunk is read. Host memory: K x chunk bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from ._byteio import tensor_memory
from ._records import RecordReader, RecordWriter

_T = TypeVar("_T")


class Staging(Protocol):
    """A device's copy operations between its memory and a host slot."""

    def to_host(self, host: torch.Tensor, device: torch.Tensor, slot: int) -> None:
        """Start copying `device` into `host` (same size), completing slot `slot`."""

    def to_device(self, device: torch.Tensor, host: torch.Tensor, slot: int) -> None:
        """Start copying `host` into `device` (same size), completing slot `slot`."""

    def wait(self, slot: int) -> None:
        """Block until the last copy of slot `slot` is complete."""

    def finish(self) -> None:
        """Order the caller's later work after every copy started so far."""


@dataclass(frozen=True)
class RingConfig:
    slots: int = 4
    chunk_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        if self.slots < 1 or self.chunk_bytes < 1:
            raise ValueError(f"a ring needs at least one slot of one byte, got {self}")

    @property
    def total_bytes(self) -> int:
        return self.slots * self.chunk_bytes


_config = RingConfig()


def configure_staging(slots: int = 4, chunk_bytes: int = 32 << 20) -> None:
    """Set the host ring that device backends stage through: `slots` pinned buffers of
    `chunk_bytes` each (default 4 x 32 MiB = 128 MiB). Applies to later saves and loads."""
    global _config
    _config = RingConfig(slots, chunk_bytes)


def staging_config() -> RingConfig:
    return _config


def _chunks(sizes: Sequence[int], chunk: int) -> list[tuple[int, int, int]]:
    """(storage index, offset, size) of every chunk, in stream order."""
    return [
        (i, off, min(chunk, n - off)) for i, n in enumerate(sizes) for off in range(0, n, chunk)
    ]


def _host_view(buffer: torch.Tensor, size: int) -> memoryview:
    return tensor_memory(buffer[:size])


def write_through_ring(
    datas: Sequence[torch.Tensor],
    records: RecordWriter,
    buffers: Sequence[torch.Tensor],
    staging: Staging,
) -> None:
    """Write each 1-D uint8 device tensor in `datas` as one record."""
    slots = len(buffers)
    chunk = buffers[0].numel()
    chunks = _chunks([d.numel() for d in datas], chunk)
    issued = 0

    def issue_until(limit: int) -> None:
        nonlocal issued
        while issued < min(limit, len(chunks)):
            i, off, size = chunks[issued]
            staging.to_host(
                buffers[issued % slots][:size], datas[i][off : off + size], issued % slots
            )
            issued += 1

    issue_until(slots)
    j = 0
    for data in datas:
        records.begin_record()
        for _ in range(0, data.numel(), chunk):
            size = chunks[j][2]
            staging.wait(j % slots)
            records.write_chunk(_host_view(buffers[j % slots], size))
            issue_until(j + 1 + slots)
            j += 1
        records.end_record()
    staging.finish()


def read_through_ring(
    jobs: Sequence[tuple[torch.Tensor, int]],
    records: RecordReader,
    buffers: Sequence[torch.Tensor],
    staging: Staging,
) -> None:
    """Fill each 1-D uint8 device tensor of `jobs` from one record, verifying its checksum."""
    slots = len(buffers)
    chunk = buffers[0].numel()
    j = 0
    for data, storage in jobs:
        records.begin_record()
        for off in range(0, data.numel(), chunk):
            size = min(chunk, data.numel() - off)
            slot = j % slots
            staging.wait(slot)
            records.sync(keep=slots - 1)  # this slot's previous hash is done
            records.read_chunk(_host_view(buffers[slot], size), storage)
            staging.to_device(data[off : off + size], buffers[slot][:size], slot)
            j += 1
        records.end_record(storage)
    staging.finish()


def ring_buffers(config: RingConfig, largest: int, pin: bool) -> list[torch.Tensor]:
    """Host slots for a run whose largest record is `largest` bytes (never more than needed)."""
    chunk = max(1, min(config.chunk_bytes, largest))
    slots = config.slots
    return [torch.empty((chunk,), dtype=torch.uint8, pin_memory=pin) for _ in range(slots)]


def runs(devices: Sequence[_T]) -> Iterator[tuple[_T, range]]:
    """Maximal runs of consecutive equal items (devices), as (item, index range)."""
    start = 0
    for i in range(1, len(devices) + 1):
        if i == len(devices) or devices[i] != devices[start]:
            if i > start:
                yield devices[start], range(start, i)
            start = i
