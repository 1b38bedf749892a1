"""Progress of long operations: a tqdm bar on a terminal, plain lines otherwise, or nothing.

Streams of this format report through the library's own hook (``progress=bar.hook`` on
`save`, `load`, `load_into`); other formats, and reads that must pass every byte (`verify`,
`send`/`recv`), are measured at the file object: `Reader` and `Writer` wrap a binary file or
a socket and count the bytes that pass through them (a `Reader` can also copy every byte it
reads to another file: `tee`). Progress goes to stderr; `make` picks the display:

- ``quiet``: none;
- stderr is a terminal and tqdm is installed: a tqdm bar;
- otherwise: a plain line at most every `LINE_INTERVAL` seconds and one when done, no
  carriage returns (logs, CI, pipes).
"""

from __future__ import annotations

import io
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

try:
    from tqdm import tqdm
except ImportError:  # an optional dependency (the `cli` extra): plain lines without it
    tqdm = None

LINE_INTERVAL = 2.0  # seconds between plain progress lines


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Progress:
    """Counts bytes toward `total` (None: unknown) and shows them; a context manager."""

    def __init__(self, desc: str, total: int | None = None) -> None:
        self.desc = desc
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if self.total is not None and self.done > self.total:
            self.total = self.done  # a total that was an estimate (headers and all)

    def hook(self, done: int, total: int) -> None:
        """The library's ``progress=`` callback: `done` bytes of `total`."""
        self.total = total
        if done > self.done:
            self.update(done - self.done)

    def close(self, failed: bool = False) -> None:
        """End the display; `failed`: the operation did not complete."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)


class _Bar(Progress):
    """A tqdm bar (stderr is a terminal)."""

    def __init__(self, desc: str, total: int | None, out: TextIO) -> None:
        super().__init__(desc, total)
        assert tqdm is not None
        self._bar = tqdm(
            desc=desc, total=total, file=out, unit="B", unit_scale=True, unit_divisor=1000,
            dynamic_ncols=True, leave=True,
        )  # fmt: skip

    def update(self, n: int) -> None:
        super().update(n)
        if self.total is not None and self._bar.total != self.total:
            self._bar.total = self.total
        self._bar.update(n)

    def close(self, failed: bool = False) -> None:
        self._bar.close()


class _Lines(Progress):
    """Plain lines, no carriage returns (stderr is a file or a pipe)."""

    def __init__(self, desc: str, total: int | None, out: TextIO) -> None:
        super().__init__(desc, total)
        self._out = out
        self._last = self.start
        self._closed = False

    def _line(self, now: float) -> str:
        done = _size(self.done)
        if self.total:
            done = f"{min(self.done / self.total, 1.0):4.0%} {done} of {_size(self.total)}"
        rate = self.done / max(now - self.start, 1e-9)
        return f"{self.desc}: {done}, {now - self.start:.1f} s, {_size(rate)}/s"

    def update(self, n: int) -> None:
        super().update(n)
        now = time.perf_counter()
        if now - self._last >= LINE_INTERVAL:
            self._last = now
            self._out.write(self._line(now) + "\n")
            self._out.flush()

    def close(self, failed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            end = " (failed)" if failed else " (done)"
            self._out.write(self._line(time.perf_counter()) + end + "\n")
            self._out.flush()


def make(desc: str, total: int | None = None, *, quiet: bool = False,
         out: TextIO | None = None) -> Progress:  # fmt: skip
    """The progress display for this process's stderr (or `out`)."""
    out = sys.stderr if out is None else out
    if quiet:
        return Progress(desc, total)
    isatty = getattr(out, "isatty", None)
    if tqdm is not None and isatty is not None and isatty():
        return _Bar(desc, total, out)
    return _Lines(desc, total, out)


class Reader(io.RawIOBase):
    """A readable binary file object over `f` (a binary file or a socket) that counts what it
    reads into `progress`, and copies it to `tee` if given.

    Not seekable unless `seekable` is True (then seeks and tells pass through to `f`, and
    progress is the furthest position read to): the library reads a non-seekable source
    through, and so verifies every record of it.
    """

    def __init__(
        self,
        f: Any,
        progress: Progress | None = None,
        *,
        seekable: bool = False,
        tee: Callable[[memoryview], Any] | None = None,
    ) -> None:
        super().__init__()
        self._f = f
        self._progress = progress
        self._seekable = seekable
        self._tee = tee
        self.count = 0  # bytes read
        self._high = f.tell() if seekable else 0  # the furthest position read to
        if isinstance(f, socket.socket):
            self._readinto: Callable[[Any], int | None] = f.recv_into
        elif hasattr(f, "readinto"):
            self._readinto = f.readinto
        else:
            self._readinto = self._via_read

    def _via_read(self, b: Any) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        result: int = self._f.seek(offset, whence)
        return result

    def tell(self) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("tell")
        result: int = self._f.tell()
        return result

    def readinto(self, b: Any) -> int | None:
        n = self._readinto(b)
        if n:
            self.count += n
            if self._tee is not None:
                self._tee(memoryview(b)[:n])
            if self._progress is not None:
                if self._seekable:  # a reader that seeks back reads some bytes twice
                    high, self._high = self._high, max(self._high, self._f.tell())
                    self._progress.update(self._high - high)
                else:
                    self._progress.update(n)
        return n


class Writer(io.RawIOBase):
    """A writable binary file object over `f` (a binary file or a socket) that counts what
    is written into `progress`."""

    def __init__(self, f: Any, progress: Progress | None = None) -> None:
        super().__init__()
        self._f = f
        self._progress = progress
        self.count = 0  # bytes written

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        if isinstance(self._f, socket.socket):
            self._f.sendall(mv)
            n = len(mv)
        else:
            n = 0
            while n < len(mv):  # a raw file may write less than asked
                wrote = self._f.write(mv[n:])
                if wrote is None:
                    raise BlockingIOError("the destination is non-blocking and not ready")
                n += wrote
        self.count += n
        if self._progress is not None:
            self._progress.update(n)
        return n

    def flush(self) -> None:
        flush = getattr(self._f, "flush", None)
        if flush is not None:
            flush()
