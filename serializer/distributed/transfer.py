"""State-dict transfer between two ranks of a process group, as one serializer stream.

`send_state_dict` saves into chunks of at most `chunk_bytes`, each sent after an int64 header
with its length (0 ends the stream, -1 says the sender's save failed); `recv_state_dict` and
`recv_state_dict_into` load what arrives with ``weights_only=True``, in place for the latter.
Memory: one chunk buffer a side (and its copy on the GPU for an NCCL group). Part of the
`serializer.distributed` client package, which exports it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist

import serializer
from serializer import SerializerError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "TransferError",
    "recv_state_dict",
    "recv_state_dict_into",
    "send_state_dict",
]


class TransferError(SerializerError, RuntimeError):
    """A transfer over a process group failed: the peer's save failed, or the peer sent
    something other than one whole stream."""


DEFAULT_CHUNK_BYTES = 16 << 20
_ABORT = -1  # chunk header: the sender's save failed


def _wire_device(group: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    backend = str(dist.get_backend(group)).lower()
    if "gloo" not in backend and "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Wire:
    """One chunk buffer (and a header) for moving bytes between two ranks."""

    def __init__(self, peer: int, group: Any, chunk_bytes: int, device: Any) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.peer = peer
        self.group = group
        self.capacity = chunk_bytes
        self.device = _wire_device(group, device)
        self._host_bytes = bytearray(chunk_bytes)
        self.host_mv = memoryview(self._host_bytes)
        self.host = torch.frombuffer(self._host_bytes, dtype=torch.uint8)  # the same memory
        self.wire = (
            self.host
            if self.device.type == "cpu"
            else torch.empty(chunk_bytes, dtype=torch.uint8, device=self.device)
        )
        self.header = torch.zeros(1, dtype=torch.int64, device=self.device)

    def send(self, n: int) -> None:
        self.header.fill_(n)
        dist.send(self.header, self.peer, group=self.group)
        if n > 0:
            if self.wire is not self.host:
                self.wire[:n].copy_(self.host[:n])
            dist.send(self.wire[:n], self.peer, group=self.group)

    def recv(self) -> int:
        dist.recv(self.header, self.peer, group=self.group)
        n = int(self.header.item())
        if n > self.capacity:
            raise TransferError(
                f"rank {self.peer} sent a chunk of {n} bytes, more than this side's chunk_bytes "
                f"({self.capacity}); pass the same chunk_bytes on both sides"
            )
        if n > 0:
            dist.recv(self.wire[:n], self.peer, group=self.group)
            if self.wire is not self.host:
                self.host[:n].copy_(self.wire[:n])
        return n


class _ChunkWriter:
    """A binary file that sends what is written in chunks of at most `chunk_bytes`."""

    def __init__(self, wire: _Wire) -> None:
        self._wire = wire
        self._fill = 0
        self.sent = 0

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        total = len(mv)
        cap = self._wire.capacity
        while mv:
            k = min(len(mv), cap - self._fill)
            self._wire.host_mv[self._fill : self._fill + k] = mv[:k]
            self._fill += k
            mv = mv[k:]
            if self._fill == cap:
                self._flush_chunk()
        return total

    def flush(self) -> None:
        """Called by save when its stream is complete; the chunk goes out in `finish`."""

    def _flush_chunk(self) -> None:
        if self._fill:
            self._wire.send(self._fill)
            self.sent += self._fill
            self._fill = 0

    def finish(self) -> None:
        self._flush_chunk()
        self._wire.send(0)

    def abort(self) -> None:
        self._fill = 0
        self._wire.send(_ABORT)


class _ChunkReader:
    """A binary file that receives what a `_ChunkWriter` sends, one chunk at a time."""

    def __init__(self, wire: _Wire) -> None:
        self._wire = wire
        self._pos = 0
        self._end = 0
        self._done = False

    def _next(self) -> None:
        n = self._wire.recv()
        if n == _ABORT:
            self._done = True
            raise TransferError(f"rank {self._wire.peer} failed while saving its state dict")
        if n == 0:
            self._done = True
        self._pos, self._end = 0, max(n, 0)

    def readinto(self, mv: Any) -> int:
        while self._pos == self._end:
            if self._done:
                return 0
            self._next()
        k = min(len(mv), self._end - self._pos)
        mv[:k] = self._wire.host_mv[self._pos : self._pos + k]
        self._pos += k
        return k

    def finish(self) -> None:
        """After a load: the peer must have sent exactly one stream."""
        extra = self._end - self._pos
        while not self._done:
            self._next()
            extra += self._end
        if extra:
            raise TransferError(
                f"rank {self._wire.peer} sent {extra} bytes after the end of its stream"
            )

    def drain(self) -> None:
        """After a failed load: take the rest of the peer's stream so that it does not hang."""
        with contextlib.suppress(Exception):
            while not self._done:
                self._next()


def send_state_dict(
    obj: Any,
    dst: int,
    group: Any = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: Any = None,
) -> int:
    """Save `obj` (a state dict, or anything `serializer.save` takes) as one stream to rank
    `dst` (a global rank) of `group`; returns the stream's length in bytes.

    The stream goes out in chunks of at most `chunk_bytes`, each after an int64 header with
    its length; a 0 header ends the stream, -1 tells the receiver that the save failed. Memory:
    one chunk buffer (and its copy on the GPU for an NCCL group). The receiver calls
    `recv_state_dict` or `recv_state_dict_into` with the same `chunk_bytes`.
    """
    writer = _ChunkWriter(_Wire(dst, group, chunk_bytes, device))
    try:
        serializer.save(obj, writer)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.abort()
        raise
    writer.finish()
    return writer.sent


def recv_state_dict(
    src: int,
    group: Any = None,
    *,
    map_location: Any = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: Any = None,
) -> Any:
    """Receive the stream rank `src` sends with `send_state_dict` and load it
    (``weights_only=True``, as `serializer.load`)."""
    return _receive(src, group, chunk_bytes, device, serializer.load, map_location=map_location)


def recv_state_dict_into(
    state_dict: Any,
    src: int,
    group: Any = None,
    *,
    strict: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: Any = None,
) -> Any:
    """Receive the stream rank `src` sends with `send_state_dict` into the tensors of
    `state_dict`, in place (as `serializer.load_into`; a DTensor receives into its local
    shard). Returns `serializer.LoadResult`."""
    return _receive(
        src, group, chunk_bytes, device, serializer.load_into, state_dict, strict=strict
    )


def _receive(
    src: int, group: Any, chunk_bytes: int, device: Any, load: Any, *args: Any, **kwargs: Any
) -> Any:
    """`load(*args, reader, **kwargs)` on the stream rank `src` sends: exactly one stream,
    and all of it taken even when loading fails, so that the sender does not hang."""
    reader = _ChunkReader(_Wire(src, group, chunk_bytes, device))
    try:
        result = load(*args, reader, **kwargs)
    except BaseException:
        reader.drain()
        raise
    reader.finish()
    return result
