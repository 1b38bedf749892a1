"""Exact, counted byte I/O over any binary file-like object or socket.

`ByteSink` writes every byte it is given, whatever the file does with short writes or
non-blocking descriptors; `ByteSource` reads exactly what is asked or raises `TruncatedError`.
Small pieces go through one staging buffer (fewer system calls). Every system call that may
wait lets the process's GC run (`_gc`). A `ByteSource` reads ahead
only within the bound its reader sets with `expect` (the end of the stream, once the header
has told it), so streams can follow each other on one socket. Nothing here knows the layout
of a stream: that is `_format`'s; nothing here checksums: that is `_records`'.
"""

from __future__ import annotations

import ctypes
import io
import select
import socket
from collections.abc import Callable
from typing import Any

from ._errors import TruncatedError
from ._gc import wait_begins, wait_ends

STAGE_SIZE = 1 << 20  # staging buffer for small pieces read
# Writes end on multiples of ALIGN of the file offset where the writer can choose: writes
# across 2 MiB boundaries of a file ran 2-20x slower into a fresh page cache (ext4's large
# folios; docs/BENCHMARKS.md#saving-to-a-file).
ALIGN = 2 << 20
# The sink's staging buffer is flushed up to the next multiple of STAGE_FLUSH (a multiple of
# ALIGN) of the file offset, and so holds up to STAGE_FLUSH + SMALL bytes. Saving 20,000 small
# tensors to a new file took 1.2-1.7 s (0.9-1.3 s in the kernel) with 2 MiB flushes, 0.33-0.35 s
# (0.12 s) with 8 MiB ones, 0.31-0.34 s for the raw loop.
STAGE_FLUSH = 8 << 20
SMALL = 64 << 10  # pieces below this are staged
PIECE = 8 << 20  # `read` of more than this grows its result piece by piece, as data arrives


_from_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_from_memory.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
_from_memory.restype = ctypes.py_object
_PyBUF_WRITE = 0x200


def tensor_memory(data: Any) -> memoryview:
    """A writable memoryview over the bytes of a contiguous CPU tensor (no copy).

    The view does not keep `data` alive: the caller must.
    """
    n = data.numel() * data.element_size()
    if n == 0:
        return memoryview(bytearray(0))
    view: memoryview = _from_memory(data.data_ptr(), n, _PyBUF_WRITE)
    return view


def _wait_ready(f: Any, writable: bool) -> None:
    """Block until a non-blocking file is ready, or fail if it cannot be waited on."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        raise BlockingIOError("the stream is non-blocking and has no file descriptor") from None
    if writable:
        select.select([], [fd], [])
    else:
        select.select([fd], [], [])


def _position(f: Any) -> int:
    """`f`'s current position if it is a seekable file, else 0."""
    if isinstance(f, socket.socket):
        return 0
    try:
        pos = f.tell()
    except (AttributeError, OSError, ValueError):  # pipes, sockets, write-only wrappers
        return 0
    return pos if type(pos) is int and pos >= 0 else 0


def _check_binary(f: Any, what: str) -> None:
    if isinstance(f, io.TextIOBase):
        raise TypeError(f"{what} needs a binary file object, got a text stream {f!r}")


class ByteSink:
    """Writes bytes to `f` exactly, counting them (`offset`)."""

    def __init__(self, f: Any) -> None:
        _check_binary(f, "save")
        self._f = f
        self._raw_write: Callable[[memoryview], None]
        if isinstance(f, socket.socket) and f.gettimeout() != 0.0:
            self._raw_write = f.sendall
        else:
            self._raw_write = self._write_loop
        self.offset = 0
        self.written = 0  # bytes handed to f
        self.report: Callable[[int], None] | None = None  # called with `written` as it grows
        self.start = _position(f)  # where the stream begins in a seekable file; 0 elsewhere
        self._stage = bytearray(STAGE_FLUSH + SMALL)
        self._stage_mv = memoryview(self._stage)
        self._fill = 0

    def _write(self, data: memoryview) -> None:
        wait_begins()
        try:
            self._raw_write(data)
        finally:
            wait_ends()
        self.written += len(data)
        if self.report is not None:
            self.report(self.written)

    def _write_loop(self, data: memoryview) -> None:
        write = self._f.send if isinstance(self._f, socket.socket) else self._f.write
        while data:
            try:
                n = write(data)
            except BlockingIOError as e:  # non-blocking socket or buffered file
                n = getattr(e, "characters_written", 0) or None
            if not n:  # non-blocking raw file that would block
                _wait_ready(self._f, writable=True)
                continue
            if n == len(data):
                return
            data = data[n:]

    def _flush_stage(self) -> None:
        if self._fill:
            self._write(self._stage_mv[: self._fill])
            self._fill = 0

    def write(self, data: bytes | memoryview) -> None:
        """Write all of `data`; it may be reused once this returns."""
        mv = data if type(data) is memoryview and data.format == "B" else memoryview(data).cast("B")
        n = len(mv)
        if n < SMALL:
            fill = self._fill
            self._stage_mv[fill : fill + n] = mv
            self._fill = fill + n
            # Staged bytes go out once they reach the next STAGE_FLUSH boundary of the file
            # offset, up to that boundary; the rest (under n bytes) stays staged.
            begin = self.start + self.offset - fill  # the file offset of the stage's start
            cut = STAGE_FLUSH - begin % STAGE_FLUSH
            if fill + n >= cut:
                self._write(self._stage_mv[:cut])
                rest = fill + n - cut
                self._stage_mv[:rest] = bytes(self._stage_mv[cut : cut + rest])  # may overlap
                self._fill = rest
        else:
            self._flush_stage()
            self._write(mv)
        self.offset += n

    def abort(self) -> None:
        """Stop after a failure: nothing more is written."""
        self._fill = 0

    def close(self) -> None:
        """Write what is staged and flush `f` (which stays open)."""
        self._flush_stage()
        flush = getattr(self._f, "flush", None)
        wait_begins()
        try:
            while flush is not None:
                try:
                    flush()
                    return
                except BlockingIOError:  # a buffered file over a full non-blocking descriptor
                    _wait_ready(self._f, writable=True)
        finally:
            wait_ends()


class ByteSource:
    """Reads bytes from `f` exactly, counting them (`offset`).

    Reads ahead into a staging buffer only within the bound set by `expect`; before that,
    only what is asked for.
    """

    def __init__(self, f: Any) -> None:
        _check_binary(f, "load")
        self._f = f
        self._raw_readinto: Callable[[memoryview], int | None]
        if isinstance(f, socket.socket):
            self._raw_readinto = f.recv_into
        elif hasattr(f, "readinto"):
            self._raw_readinto = f.readinto
        elif hasattr(f, "read"):
            self._raw_readinto = self._readinto_via_read
        else:
            raise TypeError(f"load needs a readable binary file object, got {f!r}")
        self.offset = 0  # bytes consumed by the caller
        self._raw_offset = 0  # bytes taken from f
        self.report: Callable[[int], None] | None = None  # called with bytes taken from f
        self._limit = 0  # never read past this raw offset
        self._buf = bytearray(STAGE_SIZE)
        self._buf_mv = memoryview(self._buf)
        self._pos = 0
        self._end = 0

    def expect(self, nbytes: int) -> None:
        """The next `nbytes` bytes (from `offset`) belong to the stream being read: reads may
        fetch ahead up to their end, and never past it."""
        self._limit = self.offset + nbytes

    def _readinto_via_read(self, mv: memoryview) -> int | None:
        data = self._f.read(len(mv))
        if data is None:
            return None
        mv[: len(data)] = data
        return len(data)

    def _raw(self, mv: memoryview) -> int:
        wait_begins()
        try:
            while True:
                try:
                    n = self._raw_readinto(mv)
                except BlockingIOError:  # non-blocking socket or buffered file
                    n = None
                if n is None:
                    _wait_ready(self._f, writable=False)
                    continue
                self._raw_offset += n
                if self.report is not None:
                    self.report(self._raw_offset)
                return n
        finally:
            wait_ends()

    def readinto(self, mv: memoryview, what: str) -> None:
        """Fill `mv` completely or raise TruncatedError naming `what`."""
        want = len(mv)
        got = min(self._end - self._pos, want)
        if got:
            mv[:got] = self._buf_mv[self._pos : self._pos + got]
            self._pos += got
        while got < want:
            rest = want - got
            ahead = self._limit - self._raw_offset
            if rest < SMALL and ahead > rest:
                n = self._raw(self._buf_mv[: min(STAGE_SIZE, ahead)])
                if n == 0:
                    raise TruncatedError(what, want, got)
                k = min(n, rest)
                mv[got : got + k] = self._buf_mv[:k]
                self._pos, self._end = k, n
                got += k
            else:
                n = self._raw(mv[got:])
                if n == 0:
                    raise TruncatedError(what, want, got)
                got += n
        self.offset += want

    def read(self, n: int, what: str) -> bytes:
        """Read exactly `n` bytes, growing the result only as data arrives."""
        return bytes(self.read_bytearray(n, what))

    def read_bytearray(self, n: int, what: str) -> bytearray:
        """`read`, into a (writable) bytearray."""
        if n <= PIECE:
            out = bytearray(n)
            self.readinto(memoryview(out), what)
            return out
        parts = []
        for start in range(0, n, PIECE):
            size = min(PIECE, n - start)
            part = bytearray(size)
            try:
                self.readinto(memoryview(part), what)
            except TruncatedError as e:
                raise TruncatedError(what, n, start + e.received) from None
            parts.append(part)
        return bytearray().join(parts)

    def peek(self, n: int) -> bytes | None:
        """Up to `n` of the next bytes, not consumed: what is staged, or else what the source
        lets one look at without taking it (a socket's queue, a buffered reader's buffer, a
        seekable file); at least one byte unless the source is at its end (b""). None where
        the source offers no way to look ahead (a pipe's raw descriptor)."""
        if self._pos < self._end:
            return bytes(self._buf_mv[self._pos : min(self._end, self._pos + n)])
        f = self._f
        if isinstance(f, socket.socket):
            wait_begins()
            try:
                while True:
                    try:
                        return f.recv(n, socket.MSG_PEEK)
                    except BlockingIOError:
                        _wait_ready(f, writable=False)
            finally:
                wait_ends()
        if hasattr(f, "peek"):  # io.BufferedReader: one raw read at most, then its buffer
            data = f.peek(n)
            return None if data is None else bytes(data[:n])
        seekable = getattr(f, "seekable", None)
        try:
            if seekable is None or not seekable():
                return None
            at = f.tell()
            data = f.read(n)
            f.seek(at)
        except (OSError, ValueError):
            return None
        return None if data is None else bytes(data)

    def plan(self, spans: list[tuple[int, int]]) -> None:
        """Tell a source that fetches ahead (`_files.RangeFile`, which starts where the
        stream does) the (start, end) offsets that reads will want."""
        plan = getattr(self._f, "plan", None)
        if plan is not None:
            plan(spans)

    def take_staged(self, n: int) -> memoryview | None:
        """The next `n` bytes, consumed, if all of them are staged already (no copy; valid
        until the next read); otherwise None and nothing is consumed."""
        pos = self._pos
        if self._end - pos < n:
            return None
        self._pos = pos + n
        self.offset += n
        return self._buf_mv[pos : pos + n]

    def skip(self, n: int) -> bool:
        """Move `n` bytes ahead by seeking, if `f` is a seekable file; False if it is not."""
        seekable = getattr(self._f, "seekable", None)
        try:
            if isinstance(self._f, socket.socket) or seekable is None or not seekable():
                return False
        except (OSError, ValueError):
            return False
        buffered = self._end - self._pos
        self._f.seek(n - buffered, io.SEEK_CUR)
        self._pos = self._end = 0
        self._raw_offset += n - buffered
        self.offset += n
        if self.report is not None:
            self.report(self._raw_offset)
        return True
