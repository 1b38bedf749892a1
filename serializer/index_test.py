"""read_index: a stream's table of contents, over seekable and non-seekable files."""

from __future__ import annotations

import io

import torch

import serializer


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def test_read_index_lists_tensors_and_consumes_stream() -> None:
    sd = {
        "w": torch.zeros(3, 4, dtype=torch.bfloat16),
        "p": torch.nn.Parameter(torch.ones(2)),
        "n": 3,
    }
    for seekable in (True, False):
        buf = _bytes(sd)
        buf.seek(0, io.SEEK_END)
        buf.write(b"tail")
        buf.seek(0)
        f = buf if seekable else io.BufferedReader(_NoSeek(buf))
        index = serializer.read_index(f)
        assert index.keys() == ["w", "p"]
        assert index["w"].dtype == torch.bfloat16 and index["w"].shape == (3, 4)
        assert index["w"].nbytes == 24 and index["p"].parameter
        assert index.version == serializer.FORMAT_VERSION
        assert f.read() == b"tail"


class _NoSeek(io.RawIOBase):
    def __init__(self, f: io.BytesIO) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._f.readinto(b)
