"""DTensor helpers shared by the tests of `serializer.distributed` (and importable in ranks
started by `testing.distributed.run_ranks`).

- The DTensor names, from `torch.distributed.tensor` (torch >= 2.5) or
  `torch.distributed._tensor` (2.4): `DTensor`, `Partial`, `Replicate`, `Shard`,
  `distribute_tensor`; `StridedShard` is None where torch lacks `_StridedShard`.
- `matrix(rows, cols)`: a deterministic float32 matrix to shard.
- `assert_same_dtensor(result, expected)`: same type, local shard bits, spec and
  requires_grad.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
except ImportError:  # torch 2.4
    from torch.distributed._tensor import (  # type: ignore[no-redef]
        DTensor,
        Partial,
        Replicate,
        Shard,
        distribute_tensor,
    )

try:
    from torch.distributed.tensor.placement_types import _StridedShard as StridedShard
except ImportError:
    StridedShard = None

__all__ = [
    "DTensor",
    "Partial",
    "Replicate",
    "Shard",
    "StridedShard",
    "assert_same_dtensor",
    "distribute_tensor",
    "matrix",
]


def matrix(rows: int = 4, cols: int = 6) -> torch.Tensor:
    return torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols)


def assert_same_dtensor(result: Any, expected: Any) -> None:
    assert type(result) is type(expected)
    torch.testing.assert_close(result.to_local(), expected.to_local(), rtol=0, atol=0)
    assert result._spec == expected._spec
    assert result.requires_grad == expected.requires_grad
