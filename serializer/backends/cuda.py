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

from serializer._errors import DeviceError
from serializer._records import RecordReader, RecordWriter
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
    def place(self, device: torch.device) -> torch.device:
        if not torch.cuda.is_available():
            raise DeviceError(
                "Attempting to deserialize object on a CUDA device but "
                "torch.cuda.is_available() is False. If you are running on a CPU-only machine, "
                "please use map_location=torch.device('cpu') to map your storages to the CPU."
            )
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"Attempting to deserialize object on CUDA device {device.index} but "
                f"torch.cuda.device_count() is {torch.cuda.device_count()}; use map_location"
            )
        return device

    def write_many(self, datas: Sequence[torch.Tensor], records: RecordWriter) -> None:
        device = datas[0].device
        with torch.cuda.device(device):
            buffers = ring_buffers(staging_config(), max(d.numel() for d in datas), pin=True)
            write_through_ring(datas, records, buffers, _CudaStaging(device))

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty((nbytes,), dtype=torch.uint8, device=device)

    def read_many(self, jobs: Sequence[tuple[torch.Tensor, int]], records: RecordReader) -> None:
        device = jobs[0][0].device
        with torch.cuda.device(device):
            buffers = ring_buffers(staging_config(), max(d.numel() for d, _ in jobs), pin=True)
            read_through_ring(jobs, records, buffers, _CudaStaging(device))


BACKEND = CudaBackend()
