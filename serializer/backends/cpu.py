"""CPU backend: records go straight between tensor memory and the stream, no copies."""

from __future__ import annotations

import ctypes

import torch

from serializer._io import Sink, Source


def memory(data: torch.Tensor) -> memoryview:
    """A writable memoryview over the bytes of a contiguous CPU tensor (no copy).

    The view does not keep `data` alive: the caller must.
    """
    n = data.numel() * data.element_size()
    if n == 0:
        return memoryview(bytearray(0))
    return memoryview((ctypes.c_char * n).from_address(data.data_ptr())).cast("B")


class CpuBackend:
    def write(self, data: torch.Tensor, sink: Sink) -> None:
        sink.write_record(memory(data))

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty((nbytes,), dtype=torch.uint8)

    def read(self, data: torch.Tensor, source: Source, what: str) -> None:
        source.read_record(memory(data), what)


BACKEND = CpuBackend()
