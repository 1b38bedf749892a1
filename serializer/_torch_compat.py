"""Reading streams written by torch's own ``_streaming_save`` (torch >= 2.7).

That format has no magic: it starts with a pickle (first byte 0x80). We hand torch's reader
a file object that reads exactly through our `ByteSource`, so short reads work and a cut stream
raises `TruncatedError` instead of torch's internal errors.

Two bytes are all the detection there is (PROTO and a protocol from 2 up), and that format
has no checksum, so garbage that starts with them lands here too and torch's reader can fail
on it with any exception. Every such failure becomes the library's error, with torch's as its
cause: a global off the weights_only allowlist is an `UnsafeGlobalError` (a
``pickle.UnpicklingError`` with torch's message), a storage that `map_location` puts on a
device this machine lacks a `DeviceError` (a ``RuntimeError``, as torch raises), anything
else a `FormatError`. What is not the stream's fault passes through as is, as from torch's
own reader: the file's ``OSError``, a `map_location` callable's exceptions, and under
``weights_only=False`` those of the object's own code.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import torch

from . import _pickle_check
from ._byteio import ByteSource
from ._errors import (
    DeviceError,
    FormatError,
    SerializerError,
    TruncatedError,
    UnsafeGlobalError,
)

TORCH_STREAM_FIRST_BYTE = b"\x80"  # torch's _streaming_save starts with a pickle PROTO opcode


class _ExactReader:
    """The read/readline/readinto that torch's loader uses, served exactly from `src`."""

    def __init__(self, first: bytes, src: ByteSource) -> None:
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


class _CallerError(Exception):
    """An exception of the caller's `map_location`, carried through torch's reader as is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _passing_through(map_location: Any) -> Any:
    if not callable(map_location) or isinstance(map_location, (str, torch.device, Mapping)):
        # What torch would raise about a malformed location, it raises here, before any read.
        for location in (
            map_location.values() if isinstance(map_location, Mapping) else [map_location]
        ):
            if location is not None and not isinstance(location, torch.device):
                torch.device(location)
        return map_location

    def call(storage: Any, location: str) -> Any:
        try:
            return map_location(storage, location)
        except Exception as e:
            raise _CallerError(e) from None

    return call


def load_torch_stream(
    first: bytes,
    src: ByteSource,
    map_location: Any,
    pickle_module: Any,
    weights_only: bool,
    pickle_load_args: dict[str, Any],
) -> Any:
    """What `_streaming_load` does, in its two steps, so that each step's errors are told apart:
    reading the stream (any failure is the stream's), then building the object (under
    ``weights_only=False`` the object's own code runs, and its errors are passed on as is)."""
    protocol = src.read(1, "magic")
    if not 2 <= protocol[0] <= pickle.HIGHEST_PROTOCOL:
        raise FormatError(
            f"unknown magic {first + protocol!r}: neither a serializer stream nor a pickle "
            "as torch's _streaming_save writes it"
        )
    first += protocol
    try:
        from torch.distributed import _serialization as torch_reader
    except ImportError:
        raise FormatError(
            "this looks like a stream from torch's _streaming_save, which the installed "
            "torch cannot read (it lacks torch.distributed._serialization, added in 2.7)"
        ) from None
    reader: Any = torch_reader  # private: what its _streaming_load does, step by step
    map_location = _passing_through(map_location)
    zip_file = reader._PseudoZipFile()
    try:
        zip_file.read_from(_ExactReader(first, src))
    except (SerializerError, OSError):
        raise
    except EOFError as e:
        raise TruncatedError("torch stream", 1, 0) from e
    except Exception as e:  # garbage makes torch's reader raise anything
        raise _translated(e) from e
    if weights_only:  # load() refused an explicit pickle_module, as torch does
        pickle_module = reader._weights_only_unpickler
        _check_object_pickle(zip_file)
    storages = zip_file.get_storage_from_record = _FixedSizeStorages(zip_file)
    args = {"encoding": "utf-8", **pickle_load_args}
    try:
        obj = reader._load(
            zip_file=zip_file, map_location=map_location, pickle_module=pickle_module, **args
        )
    except _CallerError as e:
        raise e.error from None
    except Exception as e:
        if isinstance(e, RuntimeError) and str(e).startswith("Attempting to deserialize object"):
            raise DeviceError(str(e)) from e  # torch's device check
        if not weights_only and not isinstance(e, pickle.UnpicklingError):
            raise  # the object's own code
        raise _translated(e) from e
    storages.check()
    return obj


def _check_object_pickle(zip_file: Any) -> None:
    """What `_pickle_check` refuses in our skeletons, refused in torch's pickle of the object
    too (torch's own reader allows BUILD on a tensor, whose ``set_`` can grow a storage)."""
    record = zip_file.records.get("data.pkl")
    data = record[0] if record is not None else None
    if not isinstance(data, (bytes, bytearray)):
        raise FormatError("the torch stream has no pickle of its object (data.pkl)")
    _pickle_check.check(bytes(data), _torch_tensor_global)


def _torch_tensor_global(name: str) -> bool | None:
    """Whether calls of the global `name` return tensors (torch's rebuild functions)."""
    return True if name.startswith(("torch._utils._rebuild", "torch._tensor._rebuild")) else None


class _FixedSizeStorages:
    """`get_storage_from_record` returning bytes in storages that cannot grow, so that a
    tensor the stream claims larger than its storage is an error, never uninitialized memory
    (torch's own returns a resizable copy): a non-empty record's bytes go to a buffer-backed
    (fixed-size) storage; empty ones, which no buffer can back, are checked after the load."""

    def __init__(self, zip_file: Any) -> None:
        self._records = zip_file.records
        self._empty: list[torch.Tensor] = []

    def __call__(self, key: str, length: int, dtype: Any) -> torch.Tensor:
        record = self._records[key][0]
        if not length:
            empty = torch.empty(0, dtype=torch.uint8)
            self._empty.append(empty)
            return empty
        data = torch.frombuffer(bytearray(length), dtype=torch.uint8)
        data.copy_(torch.empty(0, dtype=torch.uint8).set_(record)[:length])
        return data

    def check(self) -> None:
        if any(t.untyped_storage().nbytes() for t in self._empty):
            raise FormatError("the torch stream grows an empty storage (a tensor past its end)")


def _translated(e: Exception) -> SerializerError:
    if isinstance(e, pickle.UnpicklingError) and "allowed global" in str(e):
        return UnsafeGlobalError(str(e))
    return FormatError(f"torch's reader failed on this stream: {type(e).__name__}: {e}")
