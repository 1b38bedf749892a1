"""Records: a storage's bytes followed by their checksum, written and verified as they pass.

`RecordWriter` and `RecordReader` sit on the byte layer (`_byteio`) and handle whole records
(`write_record`, `read_record`, `skip_record`) or one record in chunks (`begin_record`, then
`write_chunk` / `read_chunk`, then `end_record`), as device backends that stage through
host buffers need. Large pieces are hashed on a helper thread while the next piece moves, where
the process has a core to spare for it; inline otherwise. Errors name the record by its
storage index (`TruncatedError.storage`, `ChecksumError.storage`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import _format
from ._byteio import ALIGN, PIECE, SMALL, ByteSink, ByteSource
from ._cpus import usable_cpus
from ._errors import ChecksumError, TruncatedError

HASH_IN_THREAD = 1 << 20  # pieces at least this big are hashed on the helper thread
# Inline, a large record is hashed and written piece by piece: each piece is hashed, then
# written while it is still in the CPU cache (one pass over memory, not two). Pieces end on
# multiples of WRITE_PIECE of the file offset, so that each write fills whole large folios of
# the page cache (docs/BENCHMARKS.md#saving-to-a-file).
WRITE_PIECE = ALIGN
# Inline, a large record is read and hashed in pieces this big: each is hashed right after the
# read wrote it, from the CPU's L2 cache rather than L3 or memory. Loading 1 GiB into memory at
# hand (CPU seconds, median of 9): 8 MiB pieces 0.127, 512 KiB 0.119, a bare readinto loop
# 0.082; the rest is XXH3 itself (about 0.036 s per GiB). With the helper thread, PIECE.
READ_PIECE = 512 << 10

_CHECKSUM_SIZE = _format.CHECKSUM_SIZE
_checksum = _format.checksum
_stored_checksum_at = _format.unpack_checksum_from


# The helper thread only pays where a core is free for it. With 2 CPUs, one writing and the
# other running the process at the far end of a pipe, it stalled 4 of 10 saves of 1 GiB by
# 1-1.6 s, while hashing inline (XXH3 at ~28 GB/s) cost nothing measurable (docs/BENCHMARKS.md).
HASH_THREAD = usable_cpus() >= 4


def _name(storage: int) -> str:
    return f"storage {storage}"


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


class RecordWriter:
    """Writes records to a `ByteSink`, checksumming each as it passes."""

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink
        self._hasher = _Hasher()
        self._record: Any = None

    def write_record(self, data: memoryview) -> None:
        """Write one whole record (payload and checksum) from memory that stays valid."""
        if len(data) < HASH_IN_THREAD:
            self._sink.write(data)
            self._sink.write(_format.pack_checksum(_checksum(data)))
            return
        self.begin_record()
        self.write_chunk(data)
        self.end_record()

    def begin_record(self) -> None:
        self._record = _format.checksum_state()

    def write_chunk(self, data: memoryview) -> None:
        """Write part of a record; `data` may be reused once this returns."""
        data = data.cast("B") if data.format != "B" else data
        if HASH_THREAD and len(data) >= HASH_IN_THREAD:  # hashed while the bytes are written
            self._hasher.submit(self._record, data)
            self._write_pieces(data, None)
            self._hasher.wait()
            return
        self._hasher.wait()  # earlier pieces of this record first: they hash in order
        self._write_pieces(data, self._record.update)

    def _write_pieces(self, data: memoryview, update: Any) -> None:
        """Write `data` in pieces that end on multiples of WRITE_PIECE of the file offset
        (at least SMALL bytes each, so that none goes through the sink's staging copy),
        hashing each piece with `update` just before it is written, while it is in cache.
        Writes across 2 MiB boundaries of a file ran 2-20x slower into a fresh page cache
        on the machines of docs/BENCHMARKS.md."""
        sink = self._sink
        write = sink.write
        n = len(data)
        start = 0
        while start < n:
            step = WRITE_PIECE - (sink.start + sink.offset) % WRITE_PIECE
            if step < SMALL:
                step += WRITE_PIECE
            piece = data[start : start + step]
            if update is not None:
                update(piece)
            write(piece)
            start += step

    def end_record(self) -> None:
        self._hasher.wait()
        self._sink.write(_format.pack_checksum(self._record.intdigest()))
        self._record = None

    def close(self) -> None:
        self._hasher.close()


class RecordReader:
    """Reads records from a `ByteSource`, verifying each against its checksum."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._hasher = _Hasher()
        self._record: Any = None
        self._scratch: memoryview | None = None
        self._small: memoryview | None = None

    def _verify(self, found: int, storage: int) -> None:
        staged = self._source.take_staged(_CHECKSUM_SIZE)
        if staged is None:
            what = f"checksum of {_name(storage)}"
            staged = memoryview(self._source.read(_CHECKSUM_SIZE, what))
        stored = _stored_checksum_at(staged, 0)
        if stored != found:
            raise ChecksumError(_name(storage), stored, found, storage=storage)

    def read_record(self, mv: memoryview, storage: int) -> None:
        """Fill `mv` with the payload of `storage`'s record and verify the checksum after it.

        A record under `HASH_IN_THREAD` bytes is verified before any of it is written to
        `mv`: on an error `mv` is untouched. A larger one is read straight into `mv`, which
        then holds undefined bytes on an error."""
        n = len(mv)
        try:
            if n < HASH_IN_THREAD:
                # Fast path (most small records): payload and checksum are both staged.
                staged = self._source.take_staged(n + _CHECKSUM_SIZE)
                if staged is None:
                    if self._small is None:
                        self._small = memoryview(bytearray(HASH_IN_THREAD + _CHECKSUM_SIZE))
                    staged = self._small[: n + _CHECKSUM_SIZE]
                    try:
                        self._source.readinto(staged, _name(storage))
                    except TruncatedError as e:  # count the payload and its checksum apart
                        if e.received < n:
                            raise TruncatedError(_name(storage), n, e.received) from None
                        what = f"checksum of {_name(storage)}"
                        raise TruncatedError(what, _CHECKSUM_SIZE, e.received - n) from None
                payload = staged[:n]
                stored = _stored_checksum_at(staged, n)
                found = _checksum(payload)
                if stored != found:
                    raise ChecksumError(_name(storage), stored, found, storage=storage)
                mv[:] = payload
                return
        except TruncatedError as e:
            raise TruncatedError(e.what, e.expected, e.received, storage=storage) from None
        self.begin_record()
        step = PIECE if HASH_THREAD else READ_PIECE
        for start in range(0, n, step):
            piece = mv[start : start + step]
            try:
                self.read_chunk(piece, storage)
            except TruncatedError as e:
                raise TruncatedError(
                    _name(storage), n, start + e.received, storage=storage
                ) from None
        self.end_record(storage)

    def begin_record(self) -> None:
        self._record = _format.checksum_state()

    def read_chunk(self, mv: memoryview, storage: int) -> None:
        """Read part of `storage`'s record; it is hashed in the background until `sync`."""
        try:
            self._source.readinto(mv, _name(storage))
        except TruncatedError as e:
            raise TruncatedError(e.what, e.expected, e.received, storage=storage) from None
        self._hasher.submit(self._record, mv)

    def sync(self, keep: int = 0) -> None:
        """Wait until all chunks read so far but the `keep` latest are hashed, so that their
        memory may be reused."""
        self._hasher.wait(keep)

    def end_record(self, storage: int) -> None:
        self._hasher.wait()
        try:
            self._verify(self._record.intdigest(), storage)
        except TruncatedError as e:
            raise TruncatedError(e.what, e.expected, e.received, storage=storage) from None
        self._record = None

    def skip_record(self, nbytes: int, storage: int) -> None:
        """Read and verify `storage`'s record without keeping it."""
        if self._scratch is None:
            self._scratch = memoryview(bytearray(PIECE))
        self.begin_record()
        for start in range(0, nbytes, PIECE):
            piece = self._scratch[: min(PIECE, nbytes - start)]
            try:
                self.read_chunk(piece, storage)
            except TruncatedError as e:
                raise TruncatedError(
                    _name(storage), nbytes, start + e.received, storage=storage
                ) from None
            self._hasher.wait()
        self.end_record(storage)

    def close(self) -> None:
        self._hasher.close()
