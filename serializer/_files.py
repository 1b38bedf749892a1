"""Where a stream's bytes live: a file object or socket the caller opened, a local path, or a
URL (``scheme://...``, through fsspec, an optional dependency; `storage_options` are passed
to it as fsspec users expect).

Paths and URLs are opened here and closed when the call ends; a file object stays the
caller's. A save to a local path is atomic and durable: the stream is written to a
temporary file beside the target, synced, and renamed over it, and the directory is synced
(``sync=False`` skips both syncs, as DCP's ``sync_files``); a crash leaves the old file or
none, never part of one. A failed save to a URL discards what it wrote where fsspec can.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

Location = str | os.PathLike[str]


def _path(f: Any) -> str | None:
    """The path or URL `f` names, or None for a file object."""
    if isinstance(f, (str, os.PathLike)):
        return os.fsdecode(os.fspath(f))
    return None


def _fsspec_open(url: str, mode: str, storage_options: dict[str, Any] | None) -> Any:
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            f"{url!r} is a URL: reading or writing URLs needs fsspec (and the package of its "
            "scheme, e.g. s3fs): pip install fsspec"
        ) from None
    return fsspec.open(url, mode, **(storage_options or {}))


@contextlib.contextmanager
def source(f: Any, storage_options: dict[str, Any] | None = None) -> Iterator[Any]:
    """`f` as a readable binary file object for the duration of the block."""
    path = _path(f)
    if path is None:
        if storage_options:
            raise TypeError("storage_options apply to URLs only")
        yield f
    elif "://" in path:
        with _fsspec_open(path, "rb", storage_options) as opened:
            yield opened
    else:
        with open(path, "rb", buffering=0) as opened:  # raw: reads go straight into tensors
            yield opened


@contextlib.contextmanager
def sink(
    f: Any, *, sync: bool = True, storage_options: dict[str, Any] | None = None
) -> Iterator[Any]:
    """`f` as a writable binary file object for the duration of the block; for a path, the
    block's writes replace the file only if the block ends without an exception."""
    path = _path(f)
    if path is None:
        if storage_options:
            raise TypeError("storage_options apply to URLs only")
        yield f
    elif "://" in path:
        opened = _fsspec_open(path, "wb", storage_options).open()
        try:
            yield opened
        except BaseException:
            discard = getattr(opened, "discard", None)
            if discard is None:
                opened.close()
                raise
            discard()
            # fsspec's discard leaves the file open: closed, its finalizer uploads nothing.
            with contextlib.suppress(AttributeError):
                opened.closed = True
            raise
        opened.close()
    else:
        with _atomic_file(path, sync) as opened:
            yield opened


@contextlib.contextmanager
def _atomic_file(path: str, sync: bool) -> Iterator[Any]:
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # Mode 0o666 less the umask, as open() would give the file itself (mkstemp gives 0o600).
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb", buffering=0) as opened:
            yield opened
            if sync:
                os.fsync(opened.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if sync:
        _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a directory
        pass
    finally:
        os.close(fd)
