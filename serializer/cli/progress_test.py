"""serializer.cli.progress: the counting wrappers and the choice of display."""

from __future__ import annotations

import io
import socket
import threading

import pytest
import torch

import serializer
from serializer.cli import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)  # a line at every update
    out = io.StringIO()
    with progress.make("copy", 3000, out=out) as bar:
        for _ in range(3):
            bar.update(1000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 4
    assert lines[0].startswith("copy:  33% 1.0 kB of 3.0 kB")
    assert lines[-1].startswith("copy: 100% 3.0 kB of 3.0 kB") and lines[-1].endswith("(done)")


def test_failed_operation_says_so() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress.make("copy", 10, out=out):
        raise RuntimeError
    assert out.getvalue().rstrip().endswith("(failed)")


def test_quiet_shows_nothing() -> None:
    out = _Terminal()
    with progress.make("copy", 10, quiet=True, out=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal() -> None:
    pytest.importorskip("tqdm")
    out = _Terminal()
    with progress.make("copy", 1000, out=out) as bar:
        bar.update(1000)
    assert "\r" in out.getvalue() and "copy" in out.getvalue() and "100%" in out.getvalue()


def test_an_estimated_total_grows() -> None:
    out = io.StringIO()
    with progress.make("write", 100, out=out) as bar:
        bar.update(150)
    assert bar.total == 150
    assert "100% 150 B of 150 B" in out.getvalue()


def test_reader_counts_tees_and_hides_seek() -> None:
    data = bytes(range(256)) * 40
    copy = io.BytesIO()
    bar = progress.Progress("read", len(data))
    reader = progress.Reader(io.BytesIO(data), bar, tee=copy.write)
    assert not reader.seekable()
    with pytest.raises(io.UnsupportedOperation):
        reader.seek(0)
    assert reader.read() == data
    assert reader.count == bar.done == len(data)
    assert copy.getvalue() == data


def test_seekable_reader_counts_the_furthest_position() -> None:
    bar = progress.Progress("read", 1000)
    reader = progress.Reader(io.BytesIO(bytes(1000)), bar, seekable=True)
    reader.read(600)
    reader.seek(100)
    reader.read(600)  # 500 of these were read before
    assert reader.count == 1200
    assert bar.done == 700


def test_writer_counts() -> None:
    out = io.BytesIO()
    bar = progress.Progress("write")
    writer = progress.Writer(out, bar)
    sd = {"w": torch.arange(1000, dtype=torch.int32)}
    serializer.save(sd, writer)
    assert writer.count == bar.done == len(out.getvalue())
    assert torch.equal(serializer.load(io.BytesIO(out.getvalue()))["w"], sd["w"])


def test_verifying_read_through_a_socket() -> None:
    """A Reader over a socket, as `recv` uses it: read_index reads the stream through."""
    sd = {"w": torch.randn(100), "i": torch.arange(7)}
    buf = io.BytesIO()
    serializer.save(sd, buf)
    a, b = socket.socketpair()
    sender = threading.Thread(target=lambda: (a.sendall(buf.getvalue()), a.close()))
    sender.start()
    copy = io.BytesIO()
    with b:
        reader = progress.Reader(b, progress.Progress("recv"), tee=copy.write)
        index = serializer.read_index(reader)
    sender.join()
    assert index.keys() == ["w", "i"]
    assert copy.getvalue() == buf.getvalue()
