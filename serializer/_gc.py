"""Holding off Python's cyclic GC while a skeleton is pickled or unpickled.

Tens of thousands of tensors are tracked objects; on Python < 3.12 the collections they
trigger cost up to a third of a load. The pause covers only that CPU-bound work, never a wait
on a socket or file. It raises the first generation's threshold instead of disabling the GC,
and restores the thresholds only if they are still what it set: an application that disables
the GC, enables it or sets its own thresholds meanwhile is never overridden. Nested and
concurrent pauses share one.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_PAUSED_THRESHOLD0 = (1 << 31) - 1

_lock = threading.Lock()
_users = 0
_saved: tuple[int, ...] = ()
_set: tuple[int, ...] = ()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    global _users, _saved, _set
    with _lock:
        if _users == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(_PAUSED_THRESHOLD0, *_saved[1:])
            _set = gc.get_threshold()
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and gc.get_threshold() == _set:
                gc.set_threshold(*_saved)
