"""CPU backend: records go straight between tensor memory and the stream, no copies."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serializer._io import Sink, Source, tensor_memory


class CpuBackend:
    def write_many(self, datas: Sequence[torch.Tensor], sink: Sink) -> None:
        for data in datas:
            sink.write_record(tensor_memory(data))

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty((nbytes,), dtype=torch.uint8)

    def read_many(self, jobs: Sequence[tuple[torch.Tensor, str]], source: Source) -> None:
        for data, what in jobs:
            source.read_record(tensor_memory(data), what)


BACKEND = CpuBackend()
