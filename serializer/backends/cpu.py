"""CPU backend: records go straight between tensor memory and the stream, no copies."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serializer._byteio import tensor_memory
from serializer._records import RecordReader, RecordWriter


class CpuBackend:
    def place(self, device: torch.device) -> torch.device:
        return device

    def write_many(self, datas: Sequence[torch.Tensor], records: RecordWriter) -> None:
        for data in datas:
            records.write_record(tensor_memory(data))

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty((nbytes,), dtype=torch.uint8)

    def read_many(self, jobs: Sequence[tuple[torch.Tensor, int]], records: RecordReader) -> None:
        for data, storage in jobs:
            records.read_record(tensor_memory(data), storage)


BACKEND = CpuBackend()
