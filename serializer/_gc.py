"""Pausing Python's cyclic GC while a stream is processed."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic GC while a stream is processed.

    Tens of thousands of tensors are tracked objects; on Python < 3.12 the collections they
    trigger cost up to a third of a load. Nested and concurrent uses share one pause; the GC
    is re-enabled by the last one out, and only if it was enabled before the first.
    """
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()
