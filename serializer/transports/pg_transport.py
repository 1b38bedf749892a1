"""`PGTransport`: a healthy replica sends its state dict over a process group, as this
library's streams; one pass of `serializer.save` feeds every receiver.

On the wire, to each receiver, in order: chunks of at most `chunk_bytes`, each an int64
header ``[PROTOCOL, step, n]`` then ``n`` bytes (n = 0 ends the transfer, -1 says the
sender's save failed). The chunks carry two streams back to back: the index (the tree
without its tensors) and the tensors, a flat dict. The sender saves once; each chunk goes to
every receiver at once while the next chunk is filled (two chunk buffers). The receiver
loads both streams with ``weights_only=True``, the tensors in place where a `state_dict`
callable gives their destinations. Every wait is bounded by the timeout.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import torch

import serializer

from ._common import (
    CheckpointTransport,
    Deadline,
    StepMismatchError,
    T,
    TransportError,
    TransportTimeoutError,
    check_index,
    check_part,
    dest_part,
    join,
    split,
    tensors,
)

__all__ = ["DEFAULT_CHUNK_BYTES", "PGTransport"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 16 << 20
PROTOCOL = 0x53524C5A0001  # "SRLZ", version 1
_END = 0
_ABORT = -1
_TAG = 0x5352  # the tag of every message; per pair, messages arrive in order
_GRACE_S = 2.0  # beyond a send's deadline, for its thread to end


def _post(op: Callable[..., Any], t: torch.Tensor, peer: int, deadline: Deadline, what: str) -> Any:
    """`op([t], peer, tag)` (a process group's send or recv): its work; the group's own
    errors (a peer that went away) become `TransportError`."""
    try:
        return op([t], peer, _TAG)
    except RuntimeError as e:
        raise TransportError(f"{deadline.what} failed ({what}, rank {peer}): {e}") from e


def _wait(work: Any, deadline: Deadline, what: str) -> None:
    try:  # wait even once the deadline has passed: the group then gives up the operation
        done = work.wait(timedelta(seconds=max(deadline.left(), 0.001)))
    except TransportError:
        raise
    except RuntimeError as e:
        if deadline.left() <= 0 or "timed out" in str(e).lower() or "timeout" in str(e).lower():
            raise TransportTimeoutError(f"{deadline.what} timed out ({what}): {e}") from e
        raise TransportError(f"{deadline.what} failed ({what}): {e}") from e
    if done is False:
        raise deadline.error()


class _Buffer:
    """One chunk buffer: host bytes, their copy on the wire device, a header."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self._bytes = bytearray(capacity)
        self.mv = memoryview(self._bytes)
        self.host = torch.frombuffer(self._bytes, dtype=torch.uint8) if capacity else None
        self.wire = self.host
        if device.type != "cpu":
            self.wire = torch.empty(capacity, dtype=torch.uint8, device=device)
        self.header = torch.zeros(3, dtype=torch.int64, device=device)
        self.works: list[Any] = []

    def stage(self, n: int) -> torch.Tensor:
        assert self.wire is not None and self.host is not None
        if self.wire is not self.host:
            self.wire[:n].copy_(self.host[:n])
        return self.wire[:n]


class _Fanout:
    """A binary file that sends what is written, in chunks, to every destination rank."""

    def __init__(
        self, pg: Any, dsts: list[int], step: int, chunk_bytes: int, device: torch.device,
        deadline: Deadline,
    ) -> None:  # fmt: skip
        self._pg = pg
        self._dsts = dsts
        self._step = step
        self._deadline = deadline
        self._buffers = [_Buffer(chunk_bytes, device), _Buffer(chunk_bytes, device)]
        self._current = 0
        self._fill = 0
        self._capacity = chunk_bytes

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        total = len(mv)
        while mv:
            buf = self._buffers[self._current]
            k = min(len(mv), self._capacity - self._fill)
            buf.mv[self._fill : self._fill + k] = mv[:k]
            self._fill += k
            mv = mv[k:]
            if self._fill == self._capacity:
                self._send(self._fill)
        return total

    def flush(self) -> None:
        """A stream is complete; its last chunk goes with the next one, or in `finish`."""

    def _send(self, n: int) -> None:
        """Send the current buffer's first `n` bytes (or the end or abort mark, n <= 0) to
        every destination, then switch buffers, waiting for the other one's sends."""
        buf = self._buffers[self._current]
        buf.header[0], buf.header[1], buf.header[2] = PROTOCOL, self._step, n
        data = buf.stage(n) if n > 0 else None
        for dst in self._dsts:
            send = self._pg.send
            buf.works.append(_post(send, buf.header, dst, self._deadline, "sending a header"))
            if data is not None:
                buf.works.append(_post(send, data, dst, self._deadline, "sending a chunk"))
        self._current = 1 - self._current
        self._fill = 0
        self._drain(self._buffers[self._current])

    def _drain(self, buf: _Buffer) -> None:
        works, buf.works = buf.works, []
        for work in works:
            _wait(work, self._deadline, "sending a chunk")

    def finish(self) -> None:
        if self._fill:
            self._send(self._fill)
        self._send(_END)
        for buf in self._buffers:
            self._drain(buf)

    def abort(self) -> None:
        """Tell every receiver that the save failed (best effort, within the deadline)."""
        self._fill = 0
        with contextlib.suppress(Exception):
            self._drain(self._buffers[self._current])
            self._send(_ABORT)
            for buf in self._buffers:
                self._drain(buf)


class _Inbox:
    """A binary file that reads what a `_Fanout` sends to this rank. A helper thread
    receives the next chunk into a second buffer while this one is read."""

    def __init__(
        self, pg: Any, src: int, step: int, chunk_bytes: int, device: torch.device,
        deadline: Deadline,
    ) -> None:  # fmt: skip
        self._pg = pg
        self._src = src
        self._step = step
        self._deadline = deadline
        self._capacity = chunk_bytes
        self._device = device
        self._free: queue.Queue[_Buffer] = queue.Queue()
        self._full: queue.Queue[tuple[_Buffer, int, int] | BaseException] = queue.Queue()
        self._pump: threading.Thread | None = None
        self._buf: _Buffer | None = None
        self._pos = self._end = 0
        self._done = False
        self._mismatch = False

    def _run_pump(self) -> None:
        """Receive header and chunk after header and chunk into free buffers, until the end."""
        header = torch.zeros(3, dtype=torch.int64, device=self._device)
        try:
            while True:
                buf = self._free.get(timeout=max(self._deadline.left(), 0))
                self._recv(header, "receiving a chunk header")
                protocol, step, n = (int(v) for v in header.cpu().tolist())
                if protocol != PROTOCOL:
                    raise TransportError(f"rank {self._src} sent something other than a checkpoint")
                if n > self._capacity or n < _ABORT:
                    raise TransportError(
                        f"rank {self._src} sent a chunk of {n} bytes, more than this side's "
                        f"chunk_bytes ({self._capacity}); pass the same chunk_bytes on both sides"
                    )
                if n > 0:
                    assert buf.wire is not None and buf.host is not None
                    self._recv(buf.wire[:n], "receiving a chunk")
                    if buf.wire is not buf.host:
                        buf.host[:n].copy_(buf.wire[:n])
                self._full.put((buf, step, n))
                if n <= 0:
                    return
        except queue.Empty:
            self._full.put(self._deadline.error())
        except BaseException as e:
            self._full.put(e)

    def _recv(self, t: torch.Tensor, what: str) -> None:
        _wait(_post(self._pg.recv, t, self._src, self._deadline, what), self._deadline, what)

    def _next(self) -> None:
        if self._pump is None:
            for _ in range(2):
                self._free.put(_Buffer(self._capacity, self._device))
            self._pump = threading.Thread(target=self._run_pump, daemon=True)
            self._pump.start()
        if self._buf is not None:
            self._free.put(self._buf)
            self._buf = None
        try:
            item = self._full.get(timeout=max(self._deadline.left(), 0) + 1)
        except queue.Empty:
            item = self._deadline.error()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._buf, step, n = item
        self._pos, self._end = 0, max(n, 0)
        if n == _ABORT:
            self._done = True
            raise TransportError(f"rank {self._src} failed while saving step {step}")
        if n == _END:
            self._done = True
        if step != self._step and not self._mismatch:
            self._mismatch = True
            raise StepMismatchError(f"rank {self._src} sent step {step}, not step {self._step}")

    def readinto(self, mv: Any) -> int:
        while self._pos == self._end:
            if self._done:
                return 0
            self._next()
        assert self._buf is not None
        k = min(len(mv), self._end - self._pos)
        mv[:k] = self._buf.mv[self._pos : self._pos + k]
        self._pos += k
        return k

    def finish(self) -> None:
        extra = self._end - self._pos
        while not self._done:
            self._next()
            extra += self._end
        if extra:
            raise TransportError(f"rank {self._src} sent {extra} bytes after its checkpoint")

    def drain(self) -> None:
        """After a failed receive: take the rest, so that the sender does not wait for us
        (only while the deadline allows)."""
        with contextlib.suppress(Exception):
            while not self._done and self._deadline.left() > 0:
                self._next()


class _Sending:
    """A send in a thread of its own; `join` waits for it and raises its error."""

    def __init__(self, send: Callable[[], None], deadline: Deadline) -> None:
        self.error: BaseException | None = None
        self._deadline = deadline

        def run() -> None:
            try:
                send()
            except BaseException as e:
                logger.warning("%s failed: %s", deadline.what, e)
                self.error = e

        self.thread = threading.Thread(target=run, name="serializer-pg-send", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(max(self._deadline.left(), 0) + _GRACE_S)
        if self.thread.is_alive():
            raise TransportTimeoutError(f"{self._deadline.what} did not end within its timeout")
        if self.error is not None:
            raise self.error


class PGTransport(CheckpointTransport[T]):
    """torchft's `CheckpointTransport` over a process group, with this library's streams.

    Args:
        pg: the process group (torchft's, or a `torch.distributed` one); ranks are its
            group ranks.
        timeout: the default bound on a transfer (each call passes its own too).
        device: the device of the wire buffers (``cuda`` for NCCL, ``cpu`` for gloo).
        state_dict: if given, `recv_checkpoint` calls it and receives the tensors into
            those it returns, in place, when it has every path that the sender sends.
        chunk_bytes: the size of each chunk buffer (two on each side); the same on both.
        map_location: where received tensors go when not received in place.
    """

    def __init__(
        self,
        pg: Any,
        timeout: timedelta,
        device: torch.device | str = "cpu",
        state_dict: Callable[[], T] | None = None,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        map_location: Any = "cpu",
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self._pg = pg
        self._timeout = timeout
        self._device = torch.device(device)
        self._state_dict = state_dict
        self._chunk_bytes = chunk_bytes
        self._map_location = map_location
        self._sending: _Sending | None = None

    def metadata(self) -> str:
        return "<n/a>"

    def disallow_checkpoint(self) -> None:
        """Wait for the send that `send_checkpoint` started (up to its timeout), and raise
        its error if it failed. Once this returns, the state dict is no longer read."""
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.join()

    def send_checkpoint(
        self, dst_ranks: list[int], step: int, state_dict: T, timeout: timedelta
    ) -> None:
        """Start sending `state_dict` to every rank of `dst_ranks` at once, in a thread, and
        return: `disallow_checkpoint` waits for it. Every wait is bounded by `timeout`."""
        self.disallow_checkpoint()
        if not dst_ranks:
            return
        deadline = Deadline(timeout, f"sending step {step} to ranks {list(dst_ranks)}")
        index, parts = split(state_dict, step, 1)
        out = _Fanout(self._pg, list(dst_ranks), step, self._chunk_bytes, self._device, deadline)

        def send() -> None:
            try:
                serializer.save(index, out)
                serializer.save(parts[0], out)
            except BaseException:
                out.abort()
                raise
            out.finish()

        self._sending = _Sending(send, deadline)

    def shutdown(self, wait: bool = True) -> None:
        """Give a send in flight a moment to end (it ends by its own timeout anyway)."""
        sending, self._sending = self._sending, None
        if sending is not None and wait:
            sending.thread.join(_GRACE_S)

    def recv_checkpoint(self, src_rank: int, metadata: str, step: int, timeout: timedelta) -> T:
        """Receive step `step` from rank `src_rank` (``weights_only=True``; in place where a
        `state_dict` callable was given); raises `TransportTimeoutError` after `timeout`."""
        deadline = Deadline(timeout, f"receiving step {step} from rank {src_rank}")
        peer = f"rank {src_rank}"
        inbox = _Inbox(self._pg, src_rank, step, self._chunk_bytes, self._device, deadline)
        try:
            index = serializer.load(inbox)
            paths = check_index(index, step, peer)
            if len(paths) != 1:
                raise TransportError(f"{peer} sent an index of {len(paths)} parts, not 1")
            dest = tensors(self._state_dict()) if self._state_dict is not None else {}
            into = dest_part(dest, paths[0])
            if into is not None:
                serializer.load_into(into, inbox)
                part = into
            else:
                part = serializer.load(inbox, self._map_location)
                check_part(part, paths[0], peer)
            inbox.finish()
        except BaseException:
            inbox.drain()
            raise
        return cast(T, join(index, [part], peer))
