"""Holding off Python's cyclic GC while a stream is processed, but not while it waits.

Tens of thousands of tensors and their bookkeeping are tracked objects; on Python < 3.12 the
collections they trigger cost up to half of a load. `gc_paused` covers a whole save or load;
the byte layer brackets every system call that may wait for data or room (`wait_begins`,
`wait_ends`), so that
the process's GC runs as usual while a stream is blocked on a socket or pipe. The pause
raises the first generation's threshold instead of disabling the GC, and puts the thresholds
back only if they are still what it set: an application that disables or enables the GC, or
sets its own thresholds, is never overridden. Pauses of concurrent saves and loads share one.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_PAUSED_THRESHOLD0 = (1 << 31) - 1

_lock = threading.Lock()
_users = 0  # saves and loads in progress
_waiting = 0  # of them, those inside a system call
_saved: tuple[int, ...] = ()  # the application's thresholds
_paused: tuple[int, ...] = ()  # ours


def _hold() -> None:
    global _paused
    if gc.get_threshold() == _saved:
        gc.set_threshold(_PAUSED_THRESHOLD0, *_saved[1:])
        _paused = gc.get_threshold()


def _release() -> None:
    if gc.get_threshold() == _paused:
        gc.set_threshold(*_saved)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = gc.get_threshold()
            _hold()
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _release()


def wait_begins() -> None:
    """Before a system call that may wait: the GC as the application set it, until
    `wait_ends` (call it in a ``finally``)."""
    global _waiting
    with _lock:
        _waiting += 1
        if _users and _waiting == 1:
            _release()


def wait_ends() -> None:
    global _waiting
    with _lock:
        _waiting -= 1
        if _users and _waiting == 0:
            _hold()
