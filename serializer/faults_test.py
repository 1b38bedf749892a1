"""Faults with real processes, pipes, sockets and devices, no mocks: a sender SIGKILLed mid-stream,
a receiver that closes early, a disk that fills up mid-save, and eight streams at once.

Every wait is bounded: a load or save that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import serializer
from serializer import _format, _records
from testing.cases import assert_same, make_tensor

# Slow (killed and blocked child processes): the full suite runs it, the CI torch sweep does not.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = 60.0  # a child process to start (it imports torch) and reach the point of the fault
PROMPT = 20.0  # after the fault, the error must come within this (a hang never ends)
BUF = 64 << 10  # socket buffers, so that a big stream cannot fit in the kernel's buffers


def _state(seed: int, scale: int = 1) -> dict[str, torch.Tensor]:
    """A state dict of independent contiguous tensors, different for each seed: one big
    record first (over `_records.HASH_IN_THREAD` from scale 1, over `PIECE` at scale 9, so it
    is read in pieces), then small ones that are staged together, of odd sizes and dtypes."""
    return {
        "big.weight": make_tensor((scale * (256 + seed), 1024), torch.float32, seed=seed),
        "small.bias": make_tensor((7 + seed,), torch.bfloat16, seed=seed + 1),
        "steps": make_tensor((3, 5 + seed), torch.int64, seed=seed + 2),
        "mask": make_tensor((11, 3), torch.bool, seed=seed + 3),
        "c": make_tensor((2, seed + 1), torch.complex64, seed=seed + 4),
        "bytes": make_tensor((1000 + 37 * seed,), torch.uint8, seed=seed + 5),
    }


def _stream(obj: Any) -> bytes:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    return buf.getvalue()


def _zeros_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in state.items()}


def _cut_offsets(data: bytes) -> dict[str, int]:
    """Byte offsets in each part of stream `data` (whose storage 0 is its big record)."""
    index = serializer.read_index(io.BytesIO(data))
    records = sum(s.nbytes + _format.CHECKSUM_SIZE for s in index.storages)
    header_end = len(data) - _format.TRAILER_SIZE - records
    big = index.storages[0].nbytes
    assert big >= _records.HASH_IN_THREAD  # read in chunks, hashed piece by piece
    return {
        "nothing": 0,
        "preamble": 5,
        "header": header_end - 3,
        "record": header_end + big // 2,
        "checksum": header_end + big + 3,
        "trailer": len(data) - 1,
    }


class _Background(threading.Thread):
    """Runs `fn` on a daemon thread; `finish` waits a bounded time for it."""

    def __init__(self, fn: Callable[[], Any], name: str = "load") -> None:
        super().__init__(daemon=True, name=name)
        self._fn = fn
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as e:  # examined by the test
            self.error = e

    def finish(self, timeout: float = PROMPT) -> None:
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"{self.name} still running {timeout:.0f} s after the fault: it hangs")

    def result(self, timeout: float = PROMPT) -> Any:
        self.finish(timeout)
        if self.error is not None:
            raise self.error
        return self.value


def _results(threads: list[_Background], timeout: float) -> list[Any]:
    """Each thread's result, all of them within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    return [t.result(max(0.0, deadline - time.monotonic())) for t in threads]


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def _accept(listener: socket.socket, proc: subprocess.Popen[bytes]) -> socket.socket:
    """The child's connection, failing (not hanging) if the child dies or never connects."""
    listener.settimeout(0.2)
    deadline = time.monotonic() + START
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if proc.poll() is not None:
                pytest.fail(f"the child exited ({proc.returncode}) before connecting")
            continue
        conn.settimeout(None)
        return conn
    pytest.fail(f"the child did not connect in {START:.0f} s")


def _listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)  # inherited by accept
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    return listener


# ------------------------------------------------------------------- a sender that is killed


class _PauseAfter(io.RawIOBase):
    """In the sender: passes writes on until `limit` bytes have gone, then tells the parent
    (one byte on `ctl`) and sleeps in the middle of `save`, waiting to be SIGKILLed."""

    def __init__(self, write: Callable[[memoryview], int], limit: int, ctl: int) -> None:
        self._write = write
        self._room = limit
        self._ctl = ctl

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self._room <= 0:
            os.write(self._ctl, b"p")
            time.sleep(3600)
        mv = memoryview(b).cast("B")[: self._room]
        n = self._write(mv)
        self._room -= n
        return n


def _sender_main(argv: list[str]) -> None:
    """The sender process: `kind target ctl seeds scale pause_stream pause_at`. Saves
    `_state(seed, scale)` for each seed, back to back, to the pipe fd or the TCP port
    `target`. Stream number `pause_stream` (-1: none) pauses after `pause_at` bytes."""
    kind, target, ctl, seeds, scale, pause_stream, pause_at = argv
    f: Any
    if kind == "tcp":
        f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        f.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
        f.connect(("127.0.0.1", int(target)))
        raw_write = f.send
    else:
        f = open(int(target), "wb", buffering=0)  # lives until the process ends
        raw_write = f.write
    for i, seed in enumerate(int(s) for s in seeds.split(",")):
        obj = _state(seed, int(scale))
        if i == int(pause_stream):
            serializer.save(obj, _PauseAfter(raw_write, int(pause_at), int(ctl)))
        else:
            serializer.save(obj, f)  # the socket itself: sendall
    os.write(int(ctl), b"d")
    time.sleep(3600)  # the parent kills it; its end of the connection closes then


class _Sender:
    """A child process saving streams to this one over an os.pipe or a TCP connection on
    127.0.0.1. `reader` is this end: a raw FileIO, or the socket itself."""

    def __init__(
        self, kind: str, seeds: list[int], scale: int = 1, pause: tuple[int, int] = (-1, 0)
    ) -> None:
        self.reader: Any = None
        ctl_r, ctl_w = os.pipe()
        self._ctl = ctl_r
        listener = None
        if kind == "tcp":
            listener = _listener()
            target, fds = str(listener.getsockname()[1]), (ctl_w,)
        else:
            r, w = os.pipe()
            target, fds = str(w), (w, ctl_w)
        args = [kind, target, str(ctl_w), ",".join(map(str, seeds)), str(scale), *map(str, pause)]
        code = "import sys\nimport serializer.faults_test as t\nt._sender_main(sys.argv[1:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], pass_fds=fds, env=_child_env()
        )
        os.close(ctl_w)
        if listener is not None:
            with listener:
                try:
                    self.reader = _accept(listener, self.proc)
                except BaseException:
                    self.proc.kill()
                    self.proc.wait(PROMPT)
                    os.close(ctl_r)
                    raise
        else:
            os.close(w)  # else the pipe never ends: this process would hold a writer open
            self.reader = open(r, "rb", buffering=0)  # closed in close()

    def wait_for(self, what: bytes) -> None:
        """Wait for the child to say `what` (b"p": paused, b"d": done)."""
        ready, _, _ = select.select([self._ctl], [], [], START)
        if not ready:
            pytest.fail(f"the sender did not reach {what!r} in {START:.0f} s")
        got = os.read(self._ctl, 1)
        assert got == what, f"the sender said {got!r} (b'' if it died), not {what!r}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(PROMPT) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(PROMPT)
        if isinstance(self.reader, socket.socket):
            with contextlib.suppress(OSError):  # releases a thread stuck in recv
                self.reader.shutdown(socket.SHUT_RDWR)
        self.reader.close()
        os.close(self._ctl)

    def __enter__(self) -> _Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _assert_truncated(error: BaseException | None) -> None:
    assert isinstance(error, serializer.TruncatedError), f"expected TruncatedError, got {error!r}"
    assert error.received < error.expected, error


def _assert_ended_at(cut: str, error: BaseException | None) -> None:
    """A source that ends inside a stream is a truncation; one that ends before its first
    byte ("nothing") is a clean end (`EndOfStream`): the receiver cannot tell a sender killed
    there from one that closed, and neither is a truncation."""
    if cut == "nothing":
        assert isinstance(error, serializer.EndOfStream), f"expected EndOfStream, got {error!r}"
        assert not isinstance(error, serializer.TruncatedError)
    else:
        _assert_truncated(error)


_CUTS = ["nothing", "preamble", "header", "record", "checksum", "trailer"]


@pytest.mark.parametrize(
    "cut,into",
    [pytest.param(cut, False, id=f"{cut}-load") for cut in _CUTS]
    + [pytest.param(cut, True, id=f"{cut}-load_into") for cut in ("preamble", "record", "trailer")],
)
@pytest.mark.parametrize("kind", ["pipe", "tcp"])
def test_sender_killed_mid_stream_is_a_truncation(kind: str, cut: str, into: bool) -> None:
    """The sender dies (SIGKILL) while the receiver waits for the rest of the stream."""
    seed, scale = 1, 3
    at = _cut_offsets(_stream(_state(seed, scale)))[cut]
    dest = _zeros_like(_state(seed, scale))
    with _Sender(kind, [seed], scale, pause=(0, at)) as sender:
        if into:
            loader = _Background(lambda: serializer.load_into(dest, sender.reader))
        else:
            loader = _Background(lambda: serializer.load(sender.reader))
        loader.start()  # reads while the sender writes (a stream is more than the pipe holds)
        sender.wait_for(b"p")
        time.sleep(0.05)  # let the load reach the wait for the bytes that will never come
        sender.kill()
        loader.finish()
    _assert_ended_at(cut, loader.error)


@pytest.mark.parametrize("kind", ["pipe", "tcp"])
def test_sender_killed_while_blocked_in_save(kind: str) -> None:
    """No pausing writer: the sender blocks in `save` itself (sendall, or write on the pipe)
    behind a full pipe or socket buffer and is killed there; the receiver starts after."""
    with _Sender(kind, [0], scale=32) as sender:  # 32 MiB and more: far over the buffers
        ready, _, _ = select.select([sender.reader], [], [], START)
        assert ready, f"the sender wrote nothing in {START:.0f} s"
        sender.kill()
        loader = _Background(lambda: serializer.load(sender.reader))
        loader.start()
        loader.finish()
    _assert_truncated(loader.error)
    assert loader.error.what.startswith("storage 0"), loader.error  # in the big record


@pytest.mark.parametrize("cut", ["nothing", "header", "record"])
@pytest.mark.parametrize("kind", ["pipe", "tcp"])
def test_sender_killed_between_back_to_back_streams(kind: str, cut: str) -> None:
    """Two streams on one connection; the sender dies between them or inside the second: the
    first loads whole and exact; the second is a truncation (`EndOfStream` if the sender died
    before its first byte)."""
    at = _cut_offsets(_stream(_state(2)))[cut]
    with _Sender(kind, [1, 2], pause=(1, at)) as sender:
        first = _Background(lambda: serializer.load(sender.reader), "first load")
        first.start()
        first_obj = first.result(START)
        second = _Background(lambda: serializer.load(sender.reader), "second load")
        second.start()
        sender.wait_for(b"p")
        sender.kill()
        second.finish()
    assert_same(first_obj, _state(1))
    _assert_ended_at(cut, second.error)


def test_sender_that_finishes_loads_whole() -> None:
    """The harness above, without the fault: the same child, streams and loads succeed (so
    the truncations above are the kill's doing, not the harness's)."""
    with _Sender("tcp", [1, 2], scale=3) as sender:
        got = [serializer.load(sender.reader), serializer.load(sender.reader)]
        sender.wait_for(b"d")
        sender.kill()
        with pytest.raises(serializer.EndOfStream):  # a clean end after the two streams
            serializer.load(sender.reader)
    assert_same(got, [_state(1, 3), _state(2, 3)])


# ---------------------------------------------------------- a receiver that closes early

_RECEIVER = """
import os, socket, sys
kind, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "tcp":
    s = socket.create_connection(("127.0.0.1", int(target)))
    read = s.recv
else:
    fd = int(target)
    read = lambda k: os.read(fd, k)
got = 0
while got < n:
    b = read(min(1 << 16, n - got))
    if not b:
        sys.exit(3)
    got += len(b)
"""  # and exits: its end closes with the rest of the stream unread


def _writer_to_early_receiver(kind: str, n: int) -> tuple[Any, list[Any], subprocess.Popen[bytes]]:
    """Start a child process that reads `n` bytes and exits. Returns the writing end here
    (kind: pipe, pipe-buffered, pipe-nonblocking, tcp, tcp-nonblocking, tcp-timeout,
    tcp-makefile), what to close after, and the child."""
    if kind.startswith("tcp"):
        with _listener() as listener:
            port = str(listener.getsockname()[1])
            proc = subprocess.Popen([sys.executable, "-c", _RECEIVER, "tcp", port, str(n)])
            conn = _accept(listener, proc)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
        if kind == "tcp-nonblocking":
            conn.setblocking(False)
        elif kind == "tcp-timeout":
            conn.settimeout(30)  # sendall with a timeout
        if kind == "tcp-makefile":
            f = conn.makefile("wb")  # a BufferedWriter over a SocketIO
            return f, [f, conn], proc
        return conn, [conn], proc
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, "pipe", str(r), str(n)], pass_fds=(r,)
    )
    os.close(r)  # else the pipe stays open for reading here: no EPIPE, ever
    if kind == "pipe-nonblocking":
        os.set_blocking(w, False)
    f = open(w, "wb", buffering=-1 if kind == "pipe-buffered" else 0)
    return f, [f], proc


_WRITER_KINDS = [
    "pipe",
    "pipe-buffered",
    "pipe-nonblocking",
    "tcp",
    "tcp-nonblocking",
    "tcp-timeout",
    "tcp-makefile",
]


@pytest.mark.parametrize("n", [0, 100_000])
@pytest.mark.parametrize("kind", _WRITER_KINDS)
def test_receiver_closing_early_fails_the_save(kind: str, n: int) -> None:
    """The receiver takes `n` bytes of a 32 MiB stream and exits: `save` raises the
    transport's OSError (EPIPE or ECONNRESET) promptly, instead of hanging or succeeding."""
    obj = {"w": torch.arange(8 << 20, dtype=torch.float32), "note": "x"}
    f, to_close, proc = _writer_to_early_receiver(kind, n)
    saver = _Background(lambda: serializer.save(obj, f), "save")
    try:
        saver.start()
        assert proc.wait(START) == 0, "the receiver did not read its bytes"
        saver.finish()
    finally:
        proc.kill()
        proc.wait(PROMPT)
        # A save that hangs holds a buffered writer's lock: closing it would hang this test
        # too. It is left to the hung thread (which keeps it alive).
        if not saver.is_alive():
            for c in to_close:
                with contextlib.suppress(OSError):  # a buffered writer flushes once more
                    c.close()
    error = saver.error
    assert isinstance(error, OSError), f"save did not fail with an OSError: {error!r}"
    assert not isinstance(error, serializer.SerializerError), error
    assert error.errno in (errno.EPIPE, errno.ECONNRESET), error


# --------------------------------------------------------------------- a disk that fills up


class _DiskFillsAfter(io.RawIOBase):
    """A raw file whose first `room` bytes go to a real file and the rest to /dev/full, as
    on a disk that fills up: a short write, then every write fails with ENOSPC."""

    def __init__(self, path: str, room: int) -> None:
        self.file = open(path, "wb", buffering=0)  # closed in close()
        self._full = open("/dev/full", "wb", buffering=0)
        self._room = room

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        if self._room:
            n = self.file.write(mv[: self._room])
            self._room -= n
            return n
        return self._full.write(mv)  # raises OSError(ENOSPC)

    def close(self) -> None:
        self.file.close()
        self._full.close()
        super().close()


needs_dev_full = pytest.mark.skipif(
    not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)"
)


@needs_dev_full
@pytest.mark.parametrize("buffered", [False, True], ids=["raw", "buffered"])
@pytest.mark.parametrize("cut", _CUTS)
def test_disk_full_mid_save_raises_enospc(tmp_path, cut: str, buffered: bool) -> None:  # type: ignore[no-untyped-def]
    obj = _state(1, 3)
    data = _stream(obj)
    room = _cut_offsets(data)[cut]
    path = str(tmp_path / "state.stream")
    raw = _DiskFillsAfter(path, room)
    f: Any = io.BufferedWriter(raw, buffer_size=1 << 16) if buffered else raw
    try:
        with pytest.raises(OSError) as info:
            serializer.save(obj, f)
    finally:
        with contextlib.suppress(OSError):  # a buffered writer flushes once more
            f.close()
        raw.close()
    assert info.value.errno == errno.ENOSPC, info.value
    assert not isinstance(info.value, serializer.SerializerError)
    # What reached the disk is the stream's beginning, up to the byte where it filled up,
    # and it does not load.
    with open(path, "rb") as written:
        assert written.read() == data[:room]
    with open(path, "rb") as written, pytest.raises(serializer.SerializerError) as failed:
        serializer.load(written)
    _assert_ended_at(cut, failed.value)


@needs_dev_full
@pytest.mark.parametrize("buffering", [0, 1 << 24], ids=["unbuffered", "all-in-buffer"])
def test_full_device_fails_the_save(buffering: int) -> None:
    """Straight to /dev/full. With a buffer bigger than the stream, every write of `save`
    lands in the buffer and only the final flush meets ENOSPC: `save` must raise it too."""
    obj = _state(1)
    assert len(_stream(obj)) < buffering or buffering == 0
    f = open("/dev/full", "wb", buffering=buffering)
    try:
        with pytest.raises(OSError) as info:
            serializer.save(obj, f)
    finally:
        with contextlib.suppress(OSError):  # a buffered writer flushes once more, and closes
            f.close()
    assert info.value.errno == errno.ENOSPC, info.value


# ---------------------------------------------------------------- eight streams at once


def _channel(kind: str) -> tuple[Any, Any]:
    """(writing end, reading end) of a real os.pipe (raw FileIO) or TCP connection."""
    if kind == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname()[:2], timeout=START)
            server, _ = listener.accept()
        client.settimeout(None)
        server.settimeout(None)
        return client, server
    r, w = os.pipe()
    return open(w, "wb", buffering=0), open(r, "rb", buffering=0)


def _close(f: Any) -> None:
    if isinstance(f, socket.socket):
        with contextlib.suppress(OSError):  # releases a thread stuck in recv or send
            f.shutdown(socket.SHUT_RDWR)
    f.close()


def _end_writing(f: Any) -> None:
    if isinstance(f, socket.socket):
        f.shutdown(socket.SHUT_WR)
    f.close()


def _read_rest(f: Any) -> bytes:
    parts = []
    while True:
        part = f.recv(1 << 20) if isinstance(f, socket.socket) else f.read(1 << 20)
        if not part:
            return b"".join(parts)
        parts.append(part)


_N = 8


def _eight() -> list[dict[str, torch.Tensor]]:
    # Different sizes, up to one record over PIECE (8 MiB) that is read in pieces.
    return [_state(seed, scale=1 + seed) for seed in range(_N)]


@pytest.fixture(params=[False, True], ids=["hash-inline", "hash-thread"])
def hash_thread(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways a record is hashed: inline, and on the helper thread (which the library
    uses only with 4 or more CPUs). A real code path either way, switched by its flag."""
    monkeypatch.setattr(_records, "HASH_THREAD", request.param)
    return bool(request.param)


def test_eight_concurrent_loads(hash_thread: bool) -> None:
    objs = _eight()
    streams = [_stream(obj) for obj in objs]
    channels = [_channel("tcp" if i % 2 else "pipe") for i in range(_N)]
    dests = [_zeros_like(obj) for obj in objs]
    start = threading.Barrier(2 * _N)
    threshold = gc.get_threshold()

    def send(i: int) -> None:
        w = channels[i][0]
        start.wait(START)
        data = memoryview(streams[i])
        for pos in range(0, len(data), 100_003):  # odd pieces, interleaved with the others
            piece = data[pos : pos + 100_003]
            if isinstance(w, socket.socket):
                w.sendall(piece)
            else:
                while piece:  # a raw pipe may take part of it
                    piece = piece[w.write(piece) :]
        _end_writing(w)

    def receive(i: int) -> Any:
        r = channels[i][1]
        start.wait(START)
        if i % 4 == 3:
            serializer.load_into(dests[i], r)
            loaded: Any = dests[i]
        else:
            loaded = serializer.load(r)
        assert _read_rest(r) == b"", "load read past its stream, or not all of it"
        return loaded

    senders = [_Background(lambda i=i: send(i), f"send {i}") for i in range(_N)]
    loaders = [_Background(lambda i=i: receive(i), f"load {i}") for i in range(_N)]
    try:
        for t in senders + loaders:
            t.start()
        results = _results(senders + loaders, START)[_N:]
    finally:
        for w, r in channels:
            _close(w)
            _close(r)
    for result, obj in zip(results, objs, strict=True):
        assert_same(result, obj)
    assert gc.get_threshold() == threshold, "the GC pause outlived the loads"


def test_eight_concurrent_saves(hash_thread: bool) -> None:
    objs = _eight()
    expected = [_stream(obj) for obj in objs]
    channels = [_channel("tcp" if i % 2 else "pipe") for i in range(_N)]
    start = threading.Barrier(2 * _N)
    threshold = gc.get_threshold()

    def send(i: int) -> None:
        w = channels[i][0]
        start.wait(START)
        serializer.save(objs[i], w)
        _end_writing(w)

    def receive(i: int) -> bytes:
        r = channels[i][1]
        start.wait(START)
        return _read_rest(r)

    savers = [_Background(lambda i=i: send(i), f"save {i}") for i in range(_N)]
    readers = [_Background(lambda i=i: receive(i), f"read {i}") for i in range(_N)]
    try:
        for t in savers + readers:
            t.start()
        received = _results(savers + readers, START)[_N:]
    finally:
        for w, r in channels:
            _close(w)
            _close(r)
    for data, obj, alone in zip(received, objs, expected, strict=True):
        buf = io.BytesIO(data)
        assert_same(serializer.load(buf), obj)
        assert buf.tell() == len(data)
        assert data == alone, "a stream saved concurrently differs from the same saved alone"
    assert gc.get_threshold() == threshold, "the GC pause outlived the saves"
