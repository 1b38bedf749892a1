"""Exact, counted byte I/O on real pipes, sockets and files: short writes and reads,
non-blocking descriptors, the read-ahead bound, staging, skipping and truncation."""

from __future__ import annotations

import io
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import serializer
from serializer._byteio import PIECE, SMALL, STAGE_SIZE, ByteSink, ByteSource, tensor_memory
from testing.cases import assert_same, make_tensor

MiB = 1 << 20


def _random(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class ShortWriter(io.RawIOBase):
    """A raw file over a pipe's write end whose `write` takes at most `most` bytes."""

    def __init__(self, fd: int, most: int) -> None:
        self._fd = fd
        self._most = most
        self.calls = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.calls += 1
        return os.write(self._fd, memoryview(b)[: self._most])


class CountingReader(io.RawIOBase):
    """A raw file over a pipe's read end (or any raw file) whose `readinto` returns at most
    `most` bytes, counting every byte taken from the file (`total`, after each call in
    `totals`)."""

    def __init__(self, f: Any, most: int = 1 << 30) -> None:
        self._f = io.FileIO(f, "rb", closefd=False) if isinstance(f, int) else f
        self._most = most
        self.total = 0
        self.totals: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(memoryview(b)[: self._most])
        self.total += n
        self.totals.append(self.total)
        return int(n)


class ReadOnly:
    """A file-like object with `read` only (no `readinto`), returning short reads."""

    def __init__(self, data: bytes, most: int) -> None:
        self._f = io.BytesIO(data)
        self._most = most

    def read(self, n: int) -> bytes:
        return self._f.read(min(n, self._most))


class _Drain(threading.Thread):
    """Reads a pipe's read end to its end, starting after `delay` seconds or once `go` is
    set, whichever comes first."""

    def __init__(self, fd: int, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self._fd = fd
        self._delay = delay
        self.go = threading.Event()
        self.data = bytearray()

    def run(self) -> None:
        self.go.wait(self._delay)
        with open(self._fd, "rb", buffering=0, closefd=False) as f:
            while chunk := f.read(1 << 16):
                self.data += chunk

    def result(self) -> bytes:
        self.join(60)
        assert not self.is_alive(), "the pipe's reader did not finish"
        return bytes(self.data)


class _Feed(threading.Thread):
    """Writes `data` to a pipe's write end in pieces, pausing between them, then closes it."""

    def __init__(self, pipe: Pipe, data: bytes, piece: int, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self._pipe = pipe
        self._data = data
        self._piece = piece
        self._pause = pause

    def run(self) -> None:
        with open(self._pipe.w, "wb", buffering=0, closefd=False) as f:
            for start in range(0, len(self._data), self._piece):
                time.sleep(self._pause)
                f.write(self._data[start : start + self._piece])  # blocking: writes it all
        self._pipe.close_write()

    def finish(self) -> None:
        self.join(60)
        assert not self.is_alive(), "the pipe's writer did not finish"


class Pipe:
    """An os.pipe; `close_write` ends it for the reader."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self._open = {self.r, self.w}

    def close_write(self) -> None:
        if self.w in self._open:
            self._open.discard(self.w)
            os.close(self.w)

    def close(self) -> None:
        for fd in sorted(self._open):
            os.close(fd)
        self._open.clear()


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.close()


# ------------------------------------------------------------------------------ ByteSink

SINK_PIECES = {
    "tiny-writes": (1, [0, 1, 5, 1000, SMALL - 1, SMALL + 3]),
    "short-writes": (7919, [0, 3, 100, SMALL - 1, SMALL, STAGE_SIZE - 5, STAGE_SIZE + 1, 3 * MiB]),
}


@pytest.mark.parametrize("name", list(SINK_PIECES))
def test_sink_writes_everything_through_short_writes(pipe: Pipe, name: str) -> None:
    most, sizes = SINK_PIECES[name]
    r, w = pipe.r, pipe.w
    drain = _Drain(r)
    drain.start()
    raw = ShortWriter(w, most)
    sink = ByteSink(raw)
    pieces = [_random(n, seed) for seed, n in enumerate(sizes)]
    written = 0
    for piece in pieces:
        sink.write(piece)
        written += len(piece)
        assert sink.offset == written
    sink.close()
    pipe.close_write()
    assert drain.result() == b"".join(pieces)
    assert raw.calls >= written // most


def test_sink_copies_small_pieces_before_returning(pipe: Pipe) -> None:
    """`write` may be given memory that the caller reuses at once."""
    r, w = pipe.r, pipe.w
    drain = _Drain(r)
    drain.start()
    sink = ByteSink(ShortWriter(w, 3))
    scratch = bytearray(b"first")
    sink.write(memoryview(scratch))
    scratch[:] = b"XXXXX"
    sink.write(torch.arange(3, dtype=torch.int16).numpy())  # a buffer of another format
    sink.close()
    pipe.close_write()
    assert drain.result() == b"first" + torch.arange(3, dtype=torch.int16).numpy().tobytes()


def test_sink_waits_on_a_non_blocking_raw_pipe(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    os.set_blocking(w, False)
    drain = _Drain(r, delay=0.2)  # the pipe fills before anyone reads it
    drain.start()
    pieces = [_random(4 * MiB, 1), b"tail", _random(100_000, 2)]
    with io.FileIO(w, "wb", closefd=False) as raw:  # write returns None when it would block
        sink = ByteSink(raw)
        for piece in pieces:
            sink.write(piece)
        sink.close()
    pipe.close_write()
    assert drain.result() == b"".join(pieces)


def test_sink_waits_on_a_non_blocking_buffered_pipe(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    os.set_blocking(w, False)
    filled = 0
    try:
        while True:  # fill the pipe: the writer must wait for the reader from the start
            filled += os.write(w, b"\0" * 4096)
    except BlockingIOError:
        pass
    drain = _Drain(r, delay=1.0)  # time enough for a fixed close() to be seen waiting
    drain.start()
    pieces = [b"tail", _random(1000, 1)]  # staged, then written and flushed by close
    try:
        with open(w, "wb", closefd=False) as f:  # BufferedWriter: BlockingIOError when full
            sink = ByteSink(f)
            for piece in pieces:
                sink.write(piece)
            sink.close()
    finally:
        drain.go.set()
        pipe.close_write()
        data = drain.result()
    assert data == bytes(filled) + b"".join(pieces)


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non-blocking"])
def test_sink_over_a_socket(blocking: bool) -> None:
    a, b = socket.socketpair()
    data = _random(3 * MiB + 11)
    received = bytearray()

    def recv() -> None:
        while chunk := b.recv(1 << 16):
            received.extend(chunk)

    with a, b:
        a.setblocking(blocking)
        reader = threading.Thread(target=recv, daemon=True)
        reader.start()
        sink = ByteSink(a)
        sink.write(b"head")
        sink.write(data)
        sink.close()
        a.shutdown(socket.SHUT_WR)
        reader.join(60)
    assert bytes(received) == b"head" + data


def test_abort_drops_what_is_staged() -> None:
    buf = io.BytesIO()
    sink = ByteSink(buf)
    sink.write(b"kept")
    sink.close()
    sink.write(b"dropped")
    sink.abort()
    sink.close()
    assert buf.getvalue() == b"kept"


# ---------------------------------------------------------------------------- ByteSource


def _reader_over(kind: str, data: bytes, pipe: Pipe, most: int) -> tuple[Any, Any]:
    """A file of `kind` that yields `data` in reads of at most `most` bytes, and the thread
    that feeds it (or None)."""
    if kind == "read-only":
        return ReadOnly(data, most), None
    feed = _Feed(pipe, data, piece=max(1, len(data) // 7))
    feed.start()
    return CountingReader(pipe.r, most), feed


READ_SIZES = [1, 0, 7, 1000, SMALL - 1, SMALL, STAGE_SIZE + 3, PIECE + 5]


@pytest.mark.parametrize("kind", ["pipe", "read-only"])
@pytest.mark.parametrize("most", [1000, 100_003])
@pytest.mark.parametrize("bound", [False, True], ids=["unbounded", "bounded"])
def test_source_reads_exactly_through_short_reads(
    pipe: Pipe, kind: str, most: int, bound: bool
) -> None:
    data = _random(sum(READ_SIZES))
    f, feed = _reader_over(kind, data, pipe, most)
    source = ByteSource(f)
    if bound:
        source.expect(len(data))
    pos = 0
    for n in READ_SIZES:
        assert source.read(n, "piece") == data[pos : pos + n]
        pos += n
        assert source.offset == pos
    with pytest.raises(serializer.TruncatedError) as info:
        source.read(3, "past the end")
    assert (info.value.what, info.value.expected, info.value.received) == ("past the end", 3, 0)
    if feed is not None:
        feed.finish()


def test_source_readinto_fills_the_view(pipe: Pipe) -> None:
    data = _random(200_000)
    f, feed = _reader_over("pipe", data, pipe, 4099)
    source = ByteSource(f)
    out = bytearray(len(data))
    source.readinto(memoryview(out), "all")
    assert out == data
    feed.finish()


@pytest.mark.parametrize("buffering", [0, -1], ids=["raw", "buffered"])
def test_source_waits_on_a_non_blocking_pipe(pipe: Pipe, buffering: int) -> None:
    r = pipe.r
    os.set_blocking(r, False)
    data = _random(300_000)
    feed = _Feed(pipe, data, piece=70_000, pause=0.05)  # the reader finds the pipe empty
    feed.start()
    with open(r, "rb", buffering=buffering, closefd=False) as f:
        source = ByteSource(f)
        assert source.read(100, "head") + source.read(len(data) - 100, "rest") == data
        with pytest.raises(serializer.TruncatedError):
            source.read(1, "after the end")
    feed.finish()


def test_source_over_a_non_blocking_socket() -> None:
    a, b = socket.socketpair()
    data = _random(2 * MiB + 1)
    with a, b:
        b.setblocking(False)

        def send() -> None:
            time.sleep(0.1)  # the reader finds nothing at first
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        source = ByteSource(b)
        source.expect(len(data))
        assert source.read(10, "head") == data[:10]
        assert source.read(len(data) - 10, "rest") == data[10:]
        sender.join(60)


def test_reads_before_expect_take_only_what_is_asked() -> None:
    counting = CountingReader(io.BytesIO(_random(1000)))
    source = ByteSource(counting)
    source.read(5, "a")
    source.read(20, "b")
    assert counting.total == 25


def test_expect_bounds_the_read_ahead() -> None:
    data = _random(1000)
    counting = CountingReader(io.BytesIO(data))
    source = ByteSource(counting)
    source.read(4, "before")
    source.expect(100)  # the next 100 bytes are the stream's; the rest is not
    assert source.read(10, "in bound") == data[4:14]
    assert max(counting.totals) <= 104
    assert source.read(90, "to the bound") == data[14:104]
    assert counting.total == 104
    assert source.read(5, "past the bound") == data[104:109]  # asked for: read, no further
    assert counting.total == 109


def test_expect_never_reads_into_the_next_stream_on_one_pipe(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    first, second = _random(300, 1), _random(200, 2)
    os.write(w, first + second)  # both in the pipe: a reader could take the second's bytes
    pipe.close_write()
    counting = CountingReader(r, most=17)
    source = ByteSource(counting)
    source.expect(len(first))
    got = b"".join(source.read(n, "piece") for n in (1, 2, 50, 247))
    assert got == first
    assert max(counting.totals) == len(first)
    assert os.read(r, 1000) == second


def test_streams_back_to_back_on_one_os_pipe_leave_the_next_intact(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    objs = [
        {"a": make_tensor((1000,), torch.float32, seed=1), "n": 1},
        {"b": make_tensor((3, 5), torch.int16, seed=2), "s": "second"},
    ]
    with open(w, "wb", buffering=0, closefd=False) as f:
        for obj in objs:  # small enough that both streams sit in the pipe at once
            serializer.save(obj, f)
    pipe.close_write()
    length = len(_stream(objs[0]))
    counting = CountingReader(r)
    assert_same(serializer.load(counting), objs[0])
    assert max(counting.totals) == length, "the first load read past its stream"
    with open(r, "rb", buffering=0, closefd=False) as f:
        assert_same(serializer.load(f), objs[1])
        assert f.read() == b""


def _stream(obj: object) -> bytes:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    return buf.getvalue()


def test_take_staged() -> None:
    data = _random(1024)
    source = ByteSource(io.BytesIO(data))
    source.read(2, "unbounded")  # nothing is staged before `expect`
    assert source.take_staged(1) is None
    source.expect(1022)
    assert source.read(2, "head") == data[2:4]  # stages what the bound allows
    staged = source.take_staged(10)
    assert staged is not None and bytes(staged) == data[4:14]
    assert source.offset == 14
    assert source.take_staged(0) is not None and source.offset == 14
    assert source.take_staged(2000) is None  # not all staged: nothing consumed
    assert source.offset == 14
    assert source.read(10, "after") == data[14:24]
    rest = source.take_staged(1000)
    assert rest is not None and bytes(rest) == data[24:]
    assert source.take_staged(1) is None
    assert source.offset == 1024


@pytest.mark.parametrize("staged", [False, True], ids=["unbounded", "bounded"])
@pytest.mark.parametrize("kind", ["bytesio", "file"])
def test_skip_seeks_a_seekable_file(staged: bool, kind: str) -> None:
    data = _random(5000)
    with tempfile.TemporaryFile() as tmp:
        tmp.write(data)
        tmp.seek(0)
        f = io.BytesIO(data) if kind == "bytesio" else tmp
        source = ByteSource(f)
        if staged:
            source.expect(len(data))
        assert source.read(4, "head") == data[:4]
        assert source.skip(1000) is True
        assert source.offset == 1004
        assert source.read(4, "after the skip") == data[1004:1008]
        assert source.skip(3000) is True
        assert source.read(len(data) - 4008, "to the end") == data[4008:]
        with pytest.raises(serializer.TruncatedError):
            source.read(1, "past the end")


def test_skip_refuses_what_cannot_seek(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    data = _random(100)
    os.write(w, data)
    pipe.close_write()
    with open(r, "rb", buffering=0, closefd=False) as f:
        source = ByteSource(f)
        source.read(4, "head")
        assert source.skip(10) is False
        assert source.offset == 4
        assert source.read(10, "not skipped") == data[4:14]
    a, b = socket.socketpair()
    with a, b:
        assert ByteSource(b).skip(1) is False

    class Unseekable(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            raise OSError("cannot tell")

    assert ByteSource(Unseekable()).skip(1) is False


def test_truncated_error_carries_what_expected_received() -> None:
    with pytest.raises(serializer.TruncatedError) as info:
        ByteSource(io.BytesIO(b"abcde")).read(10, "thing")
    error = info.value
    assert (error.what, error.expected, error.received) == ("thing", 10, 5)
    assert error.storage is None and error.keys == ()
    assert str(error) == "stream truncated in thing: expected 10 bytes, received 5"
    assert isinstance(error, EOFError) and isinstance(error, serializer.FormatError)


def test_truncation_of_a_read_over_many_pieces_counts_every_piece() -> None:
    data = _random(PIECE + 3)
    with pytest.raises(serializer.TruncatedError) as info:
        ByteSource(io.BytesIO(data)).read(PIECE + 10, "big")
    assert (info.value.expected, info.value.received) == (PIECE + 10, PIECE + 3)


def test_truncation_counts_staged_bytes() -> None:
    source = ByteSource(io.BytesIO(b"0123456789"))
    source.expect(100)  # the header claimed more than the file holds
    source.read(4, "head")
    with pytest.raises(serializer.TruncatedError) as info:
        source.read(10, "rest")
    assert (info.value.expected, info.value.received) == (10, 6)


@pytest.mark.parametrize(
    "text", [io.StringIO(), io.TextIOWrapper(io.BytesIO())], ids=["StringIO", "TextIOWrapper"]
)
def test_text_streams_are_refused(text: io.TextIOBase) -> None:
    with pytest.raises(TypeError, match="binary file object"):
        ByteSink(text)
    with pytest.raises(TypeError, match="binary file object"):
        ByteSource(text)


def test_unreadable_object_is_refused() -> None:
    with pytest.raises(TypeError, match="readable binary file object"):
        ByteSource(object())


def test_tensor_memory_is_a_writable_view_without_copy() -> None:
    t = torch.zeros(4, dtype=torch.int32)
    view = tensor_memory(t)
    assert len(view) == 16 and not view.readonly
    view[0:4] = (7).to_bytes(4, "little")
    assert t[0].item() == 7
    assert len(tensor_memory(torch.zeros(0))) == 0


class _WriteLog(io.BytesIO):
    """A file that records where each write lands: (file offset, size)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, int]] = []

    def write(self, data: Any) -> int:
        self.writes.append((self.tell(), len(memoryview(data).cast("B"))))
        return super().write(data)


@pytest.mark.parametrize("lead", [0, 12345])
def test_staged_writes_end_on_flush_boundaries_of_the_file(lead: int) -> None:
    """Small pieces are staged and go out up to each STAGE_FLUSH boundary of the file offset
    (the stream may start mid-file); only the last flush ends elsewhere. The bytes are
    exact."""
    from serializer._byteio import ALIGN, STAGE_FLUSH

    assert STAGE_FLUSH % ALIGN == 0
    rng = random.Random(3)
    pieces = [rng.randbytes(rng.randrange(1, SMALL)) for _ in range(700)]
    f = _WriteLog()
    f.write(b"x" * lead)
    f.writes.clear()
    sink = ByteSink(f)
    for p in pieces:
        sink.write(p)
    sink.close()
    assert f.getvalue()[lead:] == b"".join(pieces)
    assert sink.offset == sum(map(len, pieces))
    ends = [pos + n for pos, n in f.writes]
    assert len(ends) >= 2
    assert all(end % STAGE_FLUSH == 0 for end in ends[:-1])
    assert all(n <= STAGE_FLUSH for _, n in f.writes)
