"""CPU backend: records go straight between tensor memory and the stream, no copies."""

from __future__ import annotations

import ctypes

import torch

from serializer._io import Sink, Source


_from_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_from_memory.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
_from_memory.restype = ctypes.py_object
_PyBUF_WRITE = 0x200


def memory(data: torch.Tensor) -> memoryview:
    """A writable memoryview over the bytes of a contiguous CPU tensor (no copy).

    The view does not keep `data` alive: the caller must.
    """
    n = data.numel() * data.element_size()
    if n == 0:
        return memoryview(bytearray(0))
    view: memoryview = _from_memory(data.data_ptr(), n, _PyBUF_WRITE)
    return view


class CpuBackend:
    def write(self, data: torch.Tensor, sink: Sink) -> None:
        sink.write_record(memory(data))

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty((nbytes,), dtype=torch.uint8)

    def read(self, data: torch.Tensor, source: Source, what: str) -> None:
        source.read_record(memory(data), what)


BACKEND = CpuBackend()
