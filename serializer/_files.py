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
import io
import os
import uuid
from collections import deque
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
            yield RangeFile(opened)
    else:
        with open(path, "rb", buffering=0) as opened:  # raw: reads go straight into tensors
            yield opened


class RangeFile(io.RawIOBase):
    """An fsspec file that fetches planned byte ranges ahead, several at once, with its file
    system's ``cat_ranges`` (concurrent requests on object stores and HTTP): what random
    access to a remote stream reads (`plan`). Reads elsewhere go to the file as they come.

    Planned ranges are cut into pieces of at most `PIECE` bytes and fetched in groups of at
    most `GROUP` bytes, a group when a read first needs it; a piece is dropped once read
    past, so memory holds at most about a group."""

    PIECE = 8 << 20
    GROUP = 128 << 20

    def __init__(self, f: Any) -> None:
        super().__init__()
        self._f = f
        self._pos = 0
        self._plan: deque[tuple[int, int]] = deque()  # pieces not fetched yet, in file order
        self._fetched: deque[tuple[int, bytes]] = deque()  # (start, bytes), in file order

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._f.seek(offset, whence)
        return self._pos

    def plan(self, spans: list[tuple[int, int]]) -> None:
        """The (start, end) byte ranges that reads will want, in file order."""
        pieces = []
        for start, end in spans:
            pieces += [(at, min(at + self.PIECE, end)) for at in range(start, end, self.PIECE)]
        self._plan = deque(pieces)
        self._fetched = deque()

    def _fetch_from(self, pos: int) -> None:
        plan = self._plan
        while plan and plan[0][1] <= pos:  # planned, then not wanted after all
            plan.popleft()
        if not plan or plan[0][0] > pos:
            return
        group = [plan.popleft()]
        size = group[0][1] - group[0][0]
        while plan and size + plan[0][1] - plan[0][0] <= self.GROUP:
            group.append(plan.popleft())
            size += group[-1][1] - group[-1][0]
        datas = self._f.fs.cat_ranges(
            [self._f.path] * len(group), [s for s, _ in group], [e for _, e in group],
            on_error="raise",
        )  # fmt: skip
        self._fetched = deque((start, data) for (start, _), data in zip(group, datas, strict=True))

    def readinto(self, b: Any) -> int:
        pos = self._pos
        while self._fetched and self._fetched[0][0] + len(self._fetched[0][1]) <= pos:
            self._fetched.popleft()  # read past
        if not self._fetched or self._fetched[0][0] > pos:
            self._fetch_from(pos)
        if self._fetched and self._fetched[0][0] <= pos:
            start, data = self._fetched[0]
            n = min(len(b), start + len(data) - pos)
            memoryview(b)[:n] = data[pos - start : pos - start + n]
        else:
            self._f.seek(pos)
            n = self._f.readinto(b)
        self._pos += n
        return n


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
