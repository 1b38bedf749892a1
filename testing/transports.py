"""Real transports for round trips: files, pipes and sockets, with the writer in a thread
or another process, and raw streams that move a few bytes per call."""

from __future__ import annotations

import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import serializer

Loader = Callable[[Any], Any]


class Trickle(io.RawIOBase):
    """A raw stream over `f` that moves at most a few bytes per call, as raw sockets and
    pipes may: `readinto` and `write` both return short counts."""

    def __init__(self, f: Any, seed: int = 0, most: int = 7) -> None:
        self._f = f
        self._rng = random.Random(seed)
        self._most = most

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._rng.randint(1, self._most)
        return int(self._f.readinto(memoryview(b)[:n]))

    def write(self, b: Any) -> int:
        n = self._rng.randint(1, self._most)
        return int(self._f.write(memoryview(b)[:n]))


class CountingFile(io.RawIOBase):
    """A seekable raw file over `data` that counts the bytes read from it (`read_bytes`):
    for tests of what random access reads."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)
        self.read_bytes += n
        return n


class _Writer(threading.Thread):
    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as e:  # reported by join_checked
            self.error = e

    def join_checked(self) -> None:
        self.join(60)
        assert not self.is_alive(), "writer did not finish"
        if self.error is not None:
            raise self.error


def via_bytesio(obj: Any, load: Loader) -> Any:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    result = load(buf)
    assert buf.tell() == len(buf.getvalue()), "load did not consume exactly the stream"
    return result


def via_file(obj: Any, load: Loader) -> Any:
    with tempfile.TemporaryFile() as f:
        serializer.save(obj, f)
        f.seek(0)
        return load(f)


def via_pipe(obj: Any, load: Loader) -> Any:
    """An os.pipe read and written unbuffered (raw FileIO), the writer in a thread."""
    r, w = os.pipe()
    with open(r, "rb", buffering=0) as reader, open(w, "wb", buffering=0) as writer:

        def send() -> None:
            serializer.save(obj, writer)
            writer.close()

        thread = _Writer(send)
        thread.start()
        try:
            return load(reader)
        finally:
            reader.close()
            thread.join_checked()


def via_socketpair(obj: Any, load: Loader) -> Any:
    """A connected socket pair used directly (socket.socket, not a file wrapper)."""
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

        def send() -> None:
            serializer.save(obj, a)
            a.shutdown(socket.SHUT_WR)

        thread = _Writer(send)
        thread.start()
        try:
            return load(b)
        finally:
            thread.join_checked()


def via_trickle(obj: Any, load: Loader) -> Any:
    """Short writes on save and short reads on load, a few bytes per call."""
    buf = io.BytesIO()
    serializer.save(obj, Trickle(buf, seed=1))
    buf.seek(0)
    return load(Trickle(buf, seed=2))


TRANSPORTS: dict[str, Callable[[Any, Loader], Any]] = {
    "bytesio": via_bytesio,
    "file": via_file,
    "pipe": via_pipe,
    "socketpair": via_socketpair,
    "trickle": via_trickle,
}


def save_in_subprocess(case_name: str, fd: int) -> subprocess.Popen[bytes]:
    """Start a Python process that saves catalog case `case_name` to the inherited `fd`."""
    code = (
        "import os, sys, serializer\n"
        "from testing.cases import catalog\n"
        f"case = next(c for c in catalog() if c.name == {case_name!r})\n"
        f"with open({fd}, 'wb', buffering=0) as f:\n"
        "    serializer.save(case.build('cpu'), f)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), env=env)
