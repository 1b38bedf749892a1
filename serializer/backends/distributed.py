"""A permanent name, not a backend: streams that hold DTensors call
`serializer.backends.distributed._rebuild_dtensor` (where the DTensor codec lived first), and
every version must keep loading them (docs/FORMAT.md). The code is in the client package
`serializer.distributed`; this module also keeps its earlier import path working."""

from __future__ import annotations

from typing import Any

from serializer import distributed as _package
from serializer.distributed import *  # noqa: F403
from serializer.distributed import __all__ as __all__  # noqa: PLE0604
from serializer.distributed.dtensor import _rebuild_dtensor as _rebuild_dtensor


def __getattr__(name: str) -> Any:
    return getattr(_package, name)
