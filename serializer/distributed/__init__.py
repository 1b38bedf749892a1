"""Distributed checkpoints in serializer streams: a client package of the public API.

- `dtensor`: DTensors saved as their local shard plus a spec of primitives
  (`serializer.save` / `load` use it by themselves); `local_shards()` loads them as plain
  local shards; `TopologyError`.
- `transfer`: `send_state_dict` / `recv_state_dict` / `recv_state_dict_into`, one stream
  between two ranks of a process group in bounded chunks; `TransferError`.
- `checkpoint`: `SerializerStorageWriter` / `SerializerStorageReader`, a
  `torch.distributed.checkpoint` storage layer in this format (imported on first use of its
  names here, since `torch.distributed.checkpoint` takes about half a second to import).

docs/DISTRIBUTED.md has examples.
"""

from __future__ import annotations

import importlib
from typing import Any

from .dtensor import TopologyError, local_shards
from .transfer import (
    DEFAULT_CHUNK_BYTES,
    TransferError,
    recv_state_dict,
    recv_state_dict_into,
    send_state_dict,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "METADATA_FILE",
    "SerializerStorageReader",
    "SerializerStorageWriter",
    "TopologyError",
    "TransferError",
    "local_shards",
    "recv_state_dict",
    "recv_state_dict_into",
    "send_state_dict",
]

_CHECKPOINT_NAMES = ("METADATA_FILE", "SerializerStorageReader", "SerializerStorageWriter")


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT_NAMES:
        return getattr(importlib.import_module(f"{__name__}.checkpoint"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
