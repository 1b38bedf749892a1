"""Reading streams written by torch's own ``_streaming_save`` (torch >= 2.7).

That format has no magic: it starts with a pickle (first byte 0x80). We hand torch's reader
a file object that reads exactly through our `Source`, so short reads work and a cut stream
raises `TruncatedError` instead of torch's internal errors.

Two bytes are all the detection there is (PROTO and a protocol from 2 up), and that format
has no checksum, so garbage that starts with them lands here too and torch's reader can fail
on it with any exception. Every such failure becomes the library's error, with torch's as its
cause: a global off the weights_only allowlist is an `UnsafeGlobalError` (a
``pickle.UnpicklingError`` with torch's message), a storage that `map_location` puts on a
device this machine lacks a `DeviceError` (a ``RuntimeError``, as torch raises), anything
else a `FormatError`.
"""

from __future__ import annotations

import pickle
from typing import Any

from ._errors import (
    DeviceError,
    FormatError,
    SerializerError,
    TruncatedError,
    UnsafeGlobalError,
)
from ._io import Source


class _ExactReader:
    """The read/readline/readinto that torch's loader uses, served exactly from `src`."""

    def __init__(self, first: bytes, src: Source) -> None:
        self._pending = first
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise FormatError("a torch stream asked to read to the end of the file")
        head, self._pending = self._pending[:n], self._pending[n:]
        if len(head) == n:
            return head
        return head + self._src.read(n - len(head), "torch stream record")

    def readinto(self, mv: Any) -> int:
        data = self.read(len(mv))
        mv[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        line = bytearray()
        while not line.endswith(b"\n"):
            line += self.read(1)
        return bytes(line)


def load_torch_stream(
    first: bytes,
    src: Source,
    map_location: Any,
    pickle_module: Any,
    weights_only: bool,
    pickle_load_args: dict[str, Any],
) -> Any:
    protocol = src.read(1, "magic")
    if not 2 <= protocol[0] <= pickle.HIGHEST_PROTOCOL:
        raise FormatError(
            f"unknown magic {first + protocol!r}: neither a serializer stream nor a pickle "
            "as torch's _streaming_save writes it"
        )
    first += protocol
    try:
        from torch.distributed import _serialization
    except ImportError:
        raise FormatError(
            "this looks like a stream from torch's _streaming_save, which the installed "
            "torch cannot read (it lacks torch.distributed._serialization, added in 2.7)"
        ) from None
    try:
        return _serialization._streaming_load(
            _ExactReader(first, src),  # type: ignore[arg-type]
            map_location,
            pickle_module,
            weights_only=weights_only,
            **pickle_load_args,
        )
    except SerializerError:
        raise
    except EOFError as e:
        raise TruncatedError("torch stream", 1, 0) from e
    except pickle.UnpicklingError as e:
        if "allowed global" in str(e):
            raise UnsafeGlobalError(str(e)) from e
        raise FormatError(f"torch's reader failed on this stream: {e}") from e
    except RuntimeError as e:
        if str(e).startswith("Attempting to deserialize object on"):  # torch's map_location check
            raise DeviceError(str(e)) from e
        raise FormatError(f"torch's reader failed on this stream: RuntimeError: {e}") from e
    except Exception as e:  # garbage makes torch's reader raise anything
        raise FormatError(f"torch's reader failed on this stream: {type(e).__name__}: {e}") from e
