"""Exact, counted reads and writes over any binary file-like object or socket.

`Sink` and `Source` move bytes and checksum every record as it passes. Small pieces are
coalesced in one staging buffer (fewer system calls); large pieces go straight between tensor
memory and the file, hashed on a helper thread while the next piece moves (where the process
has a core to spare for it; inline otherwise). A `Source` never reads past the end of the
stream it is reading, so streams can follow each other on one socket.
"""

from __future__ import annotations

import ctypes
import io
import os
import select
import socket
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import xxhash

from . import _format
from ._errors import ChecksumError, TruncatedError

STAGE_SIZE = 1 << 20  # staging buffer for small pieces
SMALL = 64 << 10  # pieces below this are staged
PIECE = 8 << 20  # large reads are split into pieces of this size to overlap hashing
HASH_IN_THREAD = 1 << 20  # pieces at least this big are hashed on the helper thread


_CHECKSUM_SIZE = _format.CHECKSUM_SIZE
_unpack_u64 = struct.Struct("<Q").unpack_from  # a record's checksum (docs/FORMAT.md)
_xxh3_64 = xxhash.xxh3_64_intdigest


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# The helper thread only pays where a core is free for it. With 2 CPUs, one writing and the
# other running the process at the far end of a pipe, it stalled 4 of 10 saves of 1 GiB by
# 1-1.6 s, while hashing inline (XXH3 at ~28 GB/s) cost nothing measurable (docs/BENCHMARKS.md).
HASH_THREAD = _usable_cpus() >= 4


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


class _Hasher:
    """Hashes large pieces on one helper thread, in submission order."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, state: Any, data: memoryview) -> None:
        while self._pending and self._pending[0].done():
            self._pending.pop(0).result()
        # A small piece (any piece, without HASH_THREAD) is hashed here, unless earlier pieces
        # are still being hashed on the helper thread: pieces of a record must hash in order.
        if not self._pending and (len(data) < HASH_IN_THREAD or not HASH_THREAD):
            state.update(data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="serializer-hash")
        self._pending.append(self._pool.submit(state.update, data))

    def wait(self, keep: int = 0) -> None:
        """Wait until at most the `keep` most recent pieces are still being hashed."""
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


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


def _check_binary(f: Any, what: str) -> None:
    if isinstance(f, io.TextIOBase):
        raise TypeError(f"{what} needs a binary file object, got a text stream {f!r}")


class Sink:
    """Writes a stream to `f`, counting bytes and checksumming records."""

    def __init__(self, f: Any) -> None:
        _check_binary(f, "save")
        self._f = f
        self._raw_write: Callable[[memoryview], None]
        if isinstance(f, socket.socket) and f.gettimeout() != 0.0:
            self._raw_write = f.sendall
        else:
            self._raw_write = self._write_loop
        self.offset = 0
        self._stage = bytearray(STAGE_SIZE)
        self._stage_mv = memoryview(self._stage)
        self._fill = 0
        self._hasher = _Hasher()
        self._record: Any = None

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

    def flush_stage(self) -> None:
        if self._fill:
            self._raw_write(self._stage_mv[: self._fill])
            self._fill = 0

    def write(self, data: bytes | memoryview) -> None:
        """Write bytes that are not part of a record's checksummed payload."""
        mv = data if type(data) is memoryview and data.format == "B" else memoryview(data).cast("B")
        n = len(mv)
        if n < SMALL:
            if self._fill + n > STAGE_SIZE:
                self.flush_stage()
            self._stage_mv[self._fill : self._fill + n] = mv
            self._fill += n
        else:
            self.flush_stage()
            self._raw_write(mv)
        self.offset += n

    def write_record(self, data: memoryview) -> None:
        """Write one whole record (payload and checksum) from memory that stays valid."""
        if len(data) < HASH_IN_THREAD:
            self.write(data)
            self.write(_format.pack_checksum(_format.checksum(data)))
            return
        self.begin_record()
        self.write_chunk(data)
        self.end_record()

    def begin_record(self) -> None:
        self._record = xxhash.xxh3_64()

    def write_chunk(self, data: memoryview) -> None:
        """Write part of a record; `data` may be reused once this returns."""
        data = data.cast("B") if data.format != "B" else data
        self._hasher.submit(self._record, data)
        self.write(data)
        self._hasher.wait()

    def end_record(self) -> None:
        self._hasher.wait()
        self.write(_format.pack_checksum(self._record.intdigest()))
        self._record = None

    def abort(self) -> None:
        """Stop after a failure: nothing more is written."""
        self._fill = 0
        self._hasher.close()

    def close(self) -> None:
        self.flush_stage()
        self._hasher.close()
        flush = getattr(self._f, "flush", None)
        if flush is not None:
            flush()


class Source:
    """Reads a stream from `f` exactly, counting bytes and verifying record checksums.

    Reads ahead into a staging buffer only up to `limit`, the end of the stream once the
    header has told how long it is; before that, only what is asked for.
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
        self.limit = 0  # never read past this raw offset
        self._buf = bytearray(STAGE_SIZE)
        self._buf_mv = memoryview(self._buf)
        self._pos = 0
        self._end = 0
        self._hasher = _Hasher()
        self._scratch: memoryview | None = None

    def _readinto_via_read(self, mv: memoryview) -> int | None:
        data = self._f.read(len(mv))
        if data is None:
            return None
        mv[: len(data)] = data
        return len(data)

    def _raw(self, mv: memoryview) -> int:
        while True:
            try:
                n = self._raw_readinto(mv)
            except BlockingIOError:  # non-blocking socket or buffered file
                n = None
            if n is None:
                _wait_ready(self._f, writable=False)
                continue
            self._raw_offset += n
            return n

    def readinto(self, mv: memoryview, what: str) -> None:
        """Fill `mv` completely or raise TruncatedError naming `what`."""
        want = len(mv)
        got = min(self._end - self._pos, want)
        if got:
            mv[:got] = self._buf_mv[self._pos : self._pos + got]
            self._pos += got
        while got < want:
            rest = want - got
            ahead = self.limit - self._raw_offset
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
        if n <= PIECE:
            out = bytearray(n)
            self.readinto(memoryview(out), what)
            return bytes(out)
        parts = []
        for start in range(0, n, PIECE):
            size = min(PIECE, n - start)
            part = bytearray(size)
            try:
                self.readinto(memoryview(part), what)
            except TruncatedError as e:
                raise TruncatedError(what, n, start + e.received) from None
            parts.append(part)
        return b"".join(parts)

    def _stored_checksum(self, what: str) -> int:
        size = _format.CHECKSUM_SIZE
        if self._end - self._pos >= size:  # fast path: already staged
            start = self._pos
            self._pos += size
            self.offset += size
            return _format.unpack_checksum(self._buf_mv[start : start + size])
        return _format.unpack_checksum(self.read(size, f"checksum of {what}"))

    def _verify(self, found: int, what: str) -> None:
        stored = self._stored_checksum(what)
        if stored != found:
            raise ChecksumError(what, stored, found)

    def read_record(self, mv: memoryview, what: str) -> None:
        """Fill `mv` with one record's payload and verify the checksum after it."""
        n = len(mv)
        if n < HASH_IN_THREAD:
            pos = self._pos
            # Fast path (most small records): payload and checksum are both staged. It is
            # readinto and _verify in one step; that saves 8% of a 20k-tensor load_into.
            if self._end - pos >= n + _CHECKSUM_SIZE:
                end = pos + n
                mv[:] = self._buf_mv[pos:end]
                self._pos = end + _CHECKSUM_SIZE
                self.offset += n + _CHECKSUM_SIZE
                stored = _unpack_u64(self._buf, end)[0]
                found = _xxh3_64(mv)
                if stored != found:
                    raise ChecksumError(what, stored, found)
                return
            self.readinto(mv, what)
            self._verify(_format.checksum(mv), what)
            return
        self.begin_record()
        for start in range(0, len(mv), PIECE):
            piece = mv[start : start + PIECE]
            try:
                self.read_chunk(piece, what)
            except TruncatedError as e:
                raise TruncatedError(what, len(mv), start + e.received) from None
        self.end_record(what)

    def begin_record(self) -> None:
        self._record: Any = xxhash.xxh3_64()

    def read_chunk(self, mv: memoryview, what: str) -> None:
        """Read part of a record; it is hashed in the background until `sync`."""
        self.readinto(mv, what)
        self._hasher.submit(self._record, mv)

    def sync(self, keep: int = 0) -> None:
        """Wait until all chunks read so far but the `keep` latest are hashed, so that their
        memory may be reused."""
        self._hasher.wait(keep)

    def end_record(self, what: str) -> None:
        self._hasher.wait()
        self._verify(self._record.intdigest(), what)
        self._record = None

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
        return True

    def skip_record(self, nbytes: int, what: str) -> None:
        """Read and verify a record without keeping it."""
        if self._scratch is None:
            self._scratch = memoryview(bytearray(PIECE))
        self.begin_record()
        for start in range(0, nbytes, PIECE):
            piece = self._scratch[: min(PIECE, nbytes - start)]
            try:
                self.read_chunk(piece, what)
            except TruncatedError as e:
                raise TruncatedError(what, nbytes, start + e.received) from None
            self._hasher.wait()
        self.end_record(what)

    def close(self) -> None:
        self._hasher.close()
