"""Records: payload then XXH3-64, written and verified as the bytes pass, whole or in chunks,
with the hashing inline or on the helper thread."""

from __future__ import annotations

import io
import os
import random
import struct
from typing import Any

import pytest
import torch
import xxhash

import serializer
from serializer import _records
from serializer._byteio import PIECE, ByteSink, ByteSource
from testing.cases import make_tensor, same_bits

MiB = 1 << 20
# Empty, one byte, small (staged fast path), over the helper thread's threshold, over one
# 8 MiB read piece with a tail: every path of the writer and the reader.
SIZES = [0, 1, 100, MiB + 5, (8 * MiB) + 7]


@pytest.fixture
def hash_thread(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    value: bool = request.param
    monkeypatch.setattr(_records, "HASH_THREAD", value)
    return value


def _payloads(sizes: list[int] = SIZES) -> list[bytes]:
    rng = random.Random(7)
    return [rng.randbytes(n) for n in sizes]


def _checksum(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _expected_stream(payloads: list[bytes]) -> bytes:
    """The records as FORMAT.md lays them out: each payload, then its XXH3-64 (u64 LE)."""
    return b"".join(p + struct.pack("<Q", _checksum(p)) for p in payloads)


def _write(payloads: list[bytes], chunked: bool = False) -> bytes:
    buf = io.BytesIO()
    sink = ByteSink(buf)
    writer = _records.RecordWriter(sink)
    for p in payloads:
        if chunked:  # as device backends write: a record in pieces of any size
            writer.begin_record()
            for start in range(0, len(p), 3 * MiB + 1):
                writer.write_chunk(memoryview(p)[start : start + 3 * MiB + 1])
            writer.end_record()
        else:
            writer.write_record(memoryview(p))
    writer.close()
    sink.close()
    return buf.getvalue()


def _reader(data: bytes, bound: bool = True) -> tuple[ByteSource, _records.RecordReader]:
    source = ByteSource(io.BytesIO(data))
    if bound:  # as `_read` does once the header is read: reads may stage up to the end
        source.expect(len(data))
    return source, _records.RecordReader(source)


def _starts(payloads: list[bytes]) -> list[int]:
    """The offset of each record in the stream."""
    starts, pos = [], 0
    for p in payloads:
        starts.append(pos)
        pos += len(p) + 8
    return starts


@pytest.mark.parametrize("hash_thread", [True, False], indirect=True, ids=["thread", "inline"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
@pytest.mark.parametrize("bound", [True, False], ids=["bounded", "unbounded"])
def test_round_trip_of_records_of_every_size(hash_thread: bool, chunked: bool, bound: bool) -> None:
    payloads = _payloads()
    data = _write(payloads, chunked)
    assert data == _expected_stream(payloads)
    source, reader = _reader(data, bound)
    for index, p in enumerate(payloads):
        out = bytearray(len(p))
        reader.read_record(memoryview(out), index)
        assert out == p, index
    reader.close()
    assert source.offset == len(data)


@pytest.mark.parametrize("hash_thread", [True, False], indirect=True, ids=["thread", "inline"])
def test_chunked_read_with_sync(hash_thread: bool) -> None:
    """As a device backend reads: a record in chunks, each buffer reused after `sync`."""
    payloads = _payloads()
    data = _write(payloads)
    _, reader = _reader(data)
    for index, p in enumerate(payloads):
        reader.begin_record()
        got = bytearray()
        slots = [bytearray(2 * MiB + 3) for _ in range(2)]
        for n, start in enumerate(range(0, len(p), len(slots[0]))):
            slot = slots[n % 2]
            reader.sync(keep=1)  # the slot read two chunks ago is hashed: reusable
            mv = memoryview(slot)[: min(len(slot), len(p) - start)]
            reader.read_chunk(mv, index)
            got += mv
        reader.sync()
        reader.end_record(index)
        assert got == p
    reader.close()


@pytest.mark.parametrize("hash_thread", [True, False], indirect=True, ids=["thread", "inline"])
@pytest.mark.parametrize("index", range(1, len(SIZES)), ids=[f"{n}B" for n in SIZES[1:]])
@pytest.mark.parametrize("skip", [False, True], ids=["read", "skip"])
def test_flipped_payload_byte_is_a_checksum_error_naming_the_record(
    hash_thread: bool, index: int, skip: bool
) -> None:
    payloads = _payloads()
    data = bytearray(_write(payloads))
    at = _starts(payloads)[index] + len(payloads[index]) // 2
    data[at] ^= 0x04
    flipped = bytes(data[_starts(payloads)[index] : _starts(payloads)[index] + SIZES[index]])
    source, reader = _reader(bytes(data))
    for i in range(index):
        reader.read_record(memoryview(bytearray(SIZES[i])), i)
    with pytest.raises(serializer.ChecksumError) as info:
        if skip:
            reader.skip_record(SIZES[index], index)
        else:
            reader.read_record(memoryview(bytearray(SIZES[index])), index)
    reader.close()
    error = info.value
    assert error.storage == index
    assert error.what == f"storage {index}"
    assert error.expected == _checksum(payloads[index])
    assert error.found == _checksum(flipped) != error.expected


@pytest.mark.parametrize("skip", [False, True], ids=["read", "skip"])
def test_flipped_checksum_byte_of_an_empty_record(skip: bool) -> None:
    payloads = _payloads()
    data = bytearray(_write(payloads))
    data[3] ^= 0x80  # record 0 is empty: its checksum starts the stream
    _, reader = _reader(bytes(data))
    with pytest.raises(serializer.ChecksumError) as info:
        if skip:
            reader.skip_record(0, 0)
        else:
            reader.read_record(memoryview(bytearray(0)), 0)
    assert info.value.storage == 0
    assert info.value.found == _checksum(b"")
    assert info.value.expected == _checksum(b"") ^ (0x80 << 24)


# (record index, payload bytes left before the cut)
CUTS = [(1, 0), (2, 0), (2, 99), (3, 1000), (3, MiB + 4), (4, 5), (4, PIECE + 3)]


@pytest.mark.parametrize("hash_thread", [True, False], indirect=True, ids=["thread", "inline"])
@pytest.mark.parametrize("index,kept", CUTS, ids=[f"{i}-{k}" for i, k in CUTS])
@pytest.mark.parametrize("skip", [False, True], ids=["read", "skip"])
def test_cut_payload_is_a_truncation_error_naming_the_record(
    hash_thread: bool, index: int, kept: int, skip: bool
) -> None:
    payloads = _payloads()
    data = _write(payloads)
    data = data[: _starts(payloads)[index] + kept]
    source, reader = _reader(data)
    for i in range(index):
        reader.read_record(memoryview(bytearray(SIZES[i])), i)
    with pytest.raises(serializer.TruncatedError) as info:
        if skip:
            reader.skip_record(SIZES[index], index)
        else:
            reader.read_record(memoryview(bytearray(SIZES[index])), index)
    reader.close()
    error = info.value
    assert (error.storage, error.expected, error.received) == (index, SIZES[index], kept)
    assert error.what == f"storage {index}"


@pytest.mark.parametrize("index", range(len(SIZES)), ids=[f"{n}B" for n in SIZES])
def test_cut_checksum_is_a_truncation_error_naming_the_record(index: int) -> None:
    payloads = _payloads()
    data = _write(payloads)
    data = data[: _starts(payloads)[index] + SIZES[index] + 3]
    _, reader = _reader(data)
    for i in range(index):
        reader.read_record(memoryview(bytearray(SIZES[i])), i)
    with pytest.raises(serializer.TruncatedError) as info:
        reader.read_record(memoryview(bytearray(SIZES[index])), index)
    error = info.value
    assert (error.storage, error.expected, error.received) == (index, 8, 3)
    assert error.what == f"checksum of storage {index}"


@pytest.mark.parametrize("hash_thread", [True, False], indirect=True, ids=["thread", "inline"])
def test_skip_record_consumes_exactly_one_record(hash_thread: bool) -> None:
    payloads = _payloads()
    data = _write(payloads)
    source, reader = _reader(data, bound=False)
    for index, p in enumerate(payloads):
        if index % 2:
            reader.skip_record(len(p), index)
        else:
            out = bytearray(len(p))
            reader.read_record(memoryview(out), index)
            assert out == p
        assert source.offset == _starts(payloads)[index] + len(p) + 8
    reader.close()


@pytest.mark.parametrize("hash_thread", [True, False], ids=["hash-thread", "hash-inline"])
@pytest.mark.parametrize("tail", [0, 5, (1 << 20) - 1, 1 << 20, (1 << 20) + 3])
def test_records_over_one_piece_with_any_tail(
    tail: int, hash_thread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records longer than one 8 MiB read piece, whose last piece is small or large: the
    pieces must be hashed in order whatever thread hashes them."""
    monkeypatch.setattr(_records, "HASH_THREAD", hash_thread)
    t = make_tensor(((8 << 20) + tail,), torch.uint8, seed=tail)
    for _ in range(5):
        assert same_bits(serializer.load(_bytes({"t": t}))["t"], t)


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


class _WriteLog(io.BytesIO):
    """A file that records where each write lands: (file offset, size)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, int]] = []

    def write(self, data: Any) -> int:
        self.writes.append((self.tell(), len(memoryview(data).cast("B"))))
        return super().write(data)


@pytest.mark.parametrize("hash_thread", [True, False], indirect=True, ids=["thread", "inline"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
@pytest.mark.parametrize("lead", [0, 1000])
def test_large_writes_end_on_piece_boundaries_of_the_file(
    hash_thread: bool, chunked: bool, lead: int
) -> None:
    """Large records go out in pieces ending on multiples of WRITE_PIECE of the file offset
    (where the stream starts mid-file too), each at least SMALL bytes; the bytes are those of
    FORMAT.md."""
    from serializer._byteio import SMALL

    payloads = _payloads([3 * MiB + 5, 100, 5 * MiB + 3])
    f = _WriteLog()
    f.write(b"x" * lead)
    f.writes.clear()
    sink = ByteSink(f)
    assert sink.start == lead
    writer = _records.RecordWriter(sink)
    for p in payloads:
        if chunked:
            writer.begin_record()
            for start in range(0, len(p), 3 * MiB + 1):
                writer.write_chunk(memoryview(p)[start : start + 3 * MiB + 1])
            writer.end_record()
        else:
            writer.write_record(memoryview(p))
    writer.close()
    sink.close()
    assert f.getvalue()[lead:] == _expected_stream(payloads)
    big = [(pos, n) for pos, n in f.writes if n >= SMALL]
    assert big and all(n <= _records.WRITE_PIECE + SMALL for _, n in big)
    allowed = set()  # where a piece may end off a boundary: a payload's or a chunk's end
    at = lead
    for p in payloads:
        allowed.add(at + len(p))
        if chunked:
            allowed |= {at + end for end in range(3 * MiB + 1, len(p), 3 * MiB + 1)}
        at += len(p) + 8
    assert all((pos + n) % _records.WRITE_PIECE == 0 or pos + n in allowed for pos, n in big)


def test_sink_start_is_the_file_position_or_zero(tmp_path: Any) -> None:
    with open(tmp_path / "f", "wb") as f:
        f.write(b"abc")
        assert ByteSink(f).start == 3
    r, w = os.pipe()
    try:
        with open(w, "wb", buffering=0) as pipe:
            assert ByteSink(pipe).start == 0
    finally:
        os.close(r)
