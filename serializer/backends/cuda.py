"""CUDA backend: storages stream through a small ring of pinned host buffers.

Copies run on a side stream that first waits for the caller's current stream (so pending
work that produces the tensors is finished before their bytes are read); device-to-host
copies of the next chunks overlap the writing of the current one, and host-to-device copies
overlap the reading of the next. Host memory is bounded by the ring: `slots x chunk_bytes`
(`serializer.configure_staging`), never the size of the state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serializer._io import Sink, Source
from serializer._ring import read_through_ring, ring_buffers, staging_config, write_through_ring


class _CudaStaging:
    def __init__(self, device: torch.device) -> None:
        self._caller = torch.cuda.current_stream(device)
        self._side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        self._side.wait_stream(self._caller)
        self._events: dict[int, torch.cuda.Event] = {}

    def _copy(self, dst: torch.Tensor, src: torch.Tensor, slot: int) -> None:
        with torch.cuda.stream(self._side):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(self._side)
        self._events[slot] = event

    def to_host(self, host: torch.Tensor, device: torch.Tensor, slot: int) -> None:
        self._copy(host, device, slot)

    def to_device(self, device: torch.Tensor, host: torch.Tensor, slot: int) -> None:
        self._copy(device, host, slot)

    def wait(self, slot: int) -> None:
        event = self._events.pop(slot, None)
        if event is not None:
            event.synchronize()

    def finish(self) -> None:
        self._caller.wait_stream(self._side)
        for slot in list(self._events):
            self.wait(slot)


class CudaBackend:
    def write_many(self, datas: Sequence[torch.Tensor], sink: Sink) -> None:
        device = datas[0].device
        with torch.cuda.device(device):
            buffers = ring_buffers(staging_config(), max(d.numel() for d in datas), pin=True)
            write_through_ring(datas, sink, buffers, _CudaStaging(device))

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty((nbytes,), dtype=torch.uint8, device=device)

    def read_many(self, jobs: Sequence[tuple[torch.Tensor, str]], source: Source) -> None:
        device = jobs[0][0].device
        with torch.cuda.device(device):
            buffers = ring_buffers(staging_config(), max(d.numel() for d, _ in jobs), pin=True)
            read_through_ring(jobs, source, buffers, _CudaStaging(device))


BACKEND = CudaBackend()
