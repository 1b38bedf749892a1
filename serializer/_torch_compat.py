"""Reading streams written by torch's own ``_streaming_save`` (torch >= 2.7).

That format has no magic: it starts with a pickle (first byte 0x80), the list of the records
that follow, with no length before it. We read that pickle exactly to its end, in few reads
(`_read_pickle`), unpickle it with torch's own weights_only unpickler, read the records
through our `ByteSource` (short reads work, and a cut stream raises `TruncatedError` instead
of torch's internal errors), and hand them to torch's loader.

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

import io
import pickle
import pickletools
from collections.abc import Mapping
from typing import Any

import torch

from . import _pickle_check
from ._byteio import ByteSource
from ._errors import (
    DeviceError,
    FormatError,
    SerializerError,
    UnsafeGlobalError,
    short_repr,
)

TORCH_STREAM_FIRST_BYTE = b"\x80"  # torch's _streaming_save starts with a pickle PROTO opcode
_LOOK_AHEAD = 1 << 16  # bytes looked at per call while reading the header pickle
_LOOK_AHEAD_MOST = 1 << 22  # ... where an opcode's argument is known to be longer


_OPCODES: dict[str, Any] = {op.code: op for op in pickletools.opcodes}


class _PickleEnd:
    """Where a pickle ends, in bytes that arrive piece by piece: walks whole opcodes by the
    sizes `pickletools` gives their arguments, building nothing. `feed` returns the offset
    just past STOP once it has arrived; until then None, with `need` set to how many more
    bytes certainly belong to the pickle (the rest of the opcode being read and the next
    opcode's first byte, or 1)."""

    _PREFIX = {
        pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
        pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
        pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
        pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
    }

    def __init__(self) -> None:
        self._pos = 0  # where the next opcode starts
        self.need = 1

    def feed(self, data: bytearray) -> int | None:
        while True:
            start = self._pos
            end = self._opcode_end(data, start)
            if end is None:
                return None
            if end > len(data):  # and the opcode is not STOP: one follows it, at least
                self.need = end - len(data) + 1
                return None
            self._pos = end
            if data[start] == pickle.STOP[0]:
                return end

    def _opcode_end(self, data: bytearray, at: int) -> int | None:
        if at >= len(data):
            self.need = 1
            return None
        op = _OPCODES.get(chr(data[at]))
        if op is None:
            raise FormatError(
                f"the torch stream's header is not a pickle: opcode 0x{data[at]:02x} at offset {at}"
            )
        arg = op.arg
        if arg is None:
            return at + 1
        n: int = arg.n
        if n >= 0:
            return at + 1 + n
        if n == pickletools.UP_TO_NEWLINE:
            end = at + 1
            for _ in range(2 if arg.name == "stringnl_noescape_pair" else 1):
                newline = data.find(b"\n", end)
                if newline < 0:
                    self.need = 1
                    return None
                end = newline + 1
            return end
        size, signed = self._PREFIX[n]
        if at + 1 + size > len(data):
            return at + 1 + size
        length = int.from_bytes(data[at + 1 : at + 1 + size], "little", signed=signed)
        if length < 0:
            raise FormatError(f"the torch stream's header has a negative length at {at}")
        return at + 1 + size + length


def _read_pickle(first: bytes, src: ByteSource) -> bytearray:
    """The pickle at the start of a torch stream (its list of records), read exactly to its
    STOP opcode and no further (what follows may be another stream), in few reads: looking
    ahead where the source allows (`ByteSource.peek`), else an opcode at a time."""
    data = bytearray(first)
    scan = _PickleEnd()
    while (end := scan.feed(data)) is None:
        ahead = src.peek(min(max(scan.need, _LOOK_AHEAD), _LOOK_AHEAD_MOST))
        if not ahead:
            data += src.read(min(scan.need, _LOOK_AHEAD), "torch stream header")
            continue
        known = len(data)
        data += ahead
        end = scan.feed(data)
        take = len(ahead) if end is None else end - known
        del data[known + take :]
        src.read(take, "torch stream header")  # what was looked at, now taken
        if end is not None:
            break
    return data


def _read_records(entries: Any, src: ByteSource, records: dict[str, Any]) -> None:
    """What torch's `_PseudoZipFile.read_from` does once it has the list of records (its
    first step, unpickling that list, is torch's own `_weights_only_unpickler` above): read
    each record, its bytes becoming a storage where it is one. Done here so that reads may
    run ahead within the stream (whose length the list gives) instead of one call per record,
    and so that records are read into writable buffers, which become the storages without a
    copy (torch's reader copies each one later, and warns about read-only bytes first)."""
    if not isinstance(entries, list):
        raise FormatError("the torch stream does not start with a list of its records")
    listed: list[tuple[str, bool, int]] = []
    for entry in entries:
        key = getattr(entry, "key", None)
        is_storage = getattr(entry, "is_storage", None)
        length = getattr(entry, "length", None)
        if type(key) is not str or type(is_storage) is not bool or type(length) is not int:
            raise FormatError(f"the torch stream lists a malformed record: {short_repr(entry)}")
        if length < 0:
            raise FormatError(f"the torch stream's record {key!r} has length {length}")
        listed.append((key, is_storage, length))
    src.expect(sum(length for _, _, length in listed))
    for key, is_storage, length in listed:
        data = src.read_bytearray(length, "torch stream record")
        if not is_storage:
            records[key] = (bytes(data), length)
        elif length:
            records[key] = (torch.frombuffer(data, dtype=torch.uint8).untyped_storage(), length)
        else:
            records[key] = (torch.empty(0, dtype=torch.uint8).untyped_storage(), length)


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
    head = _read_pickle(first, src)
    try:
        entries = reader._weights_only_unpickler.load(io.BytesIO(head))
    except Exception as e:  # garbage makes torch's reader raise anything
        raise _translated(e) from e
    _read_records(entries, src, zip_file.records)
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
    except SerializerError:
        raise  # the stream's fault, found by _FixedSizeStorages
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
    """`get_storage_from_record` returning storages that cannot grow, so that a tensor the
    stream claims larger than its storage is an error, never uninitialized memory (torch's
    own returns a resizable copy): a non-empty record is already a buffer-backed (fixed-size)
    storage, returned as is; empty ones, which no buffer can back, are checked after the
    load. A record the pickle does not name, one that is not a storage or one shorter than
    its storage is the stream's fault (`FormatError`), under either `weights_only`."""

    def __init__(self, zip_file: Any) -> None:
        self._records = zip_file.records
        self._empty: list[torch.Tensor] = []

    def __call__(self, key: str, length: int, dtype: Any) -> torch.Tensor:
        entry = self._records.get(key)
        if entry is None:
            raise FormatError(f"the torch stream has no record {key!r} for a storage it names")
        record = entry[0]
        if not isinstance(record, torch.UntypedStorage):
            raise FormatError(f"the torch stream's record {key!r} is not a storage")
        if record.nbytes() < length:
            raise FormatError(
                f"the torch stream's record {key!r} holds {record.nbytes()} bytes, "
                f"its storage {length}"
            )
        if not length:
            empty = torch.empty(0, dtype=torch.uint8)
            self._empty.append(empty)
            return empty
        data = torch.empty(0, dtype=torch.uint8).set_(record)  # a view, no copy
        return data if record.nbytes() == length else data[:length].clone()

    def check(self) -> None:
        if any(t.untyped_storage().nbytes() for t in self._empty):
            raise FormatError("the torch stream grows an empty storage (a tensor past its end)")


def _translated(e: Exception) -> SerializerError:
    if isinstance(e, pickle.UnpicklingError) and "allowed global" in str(e):
        return UnsafeGlobalError(str(e))
    return FormatError(f"torch's reader failed on this stream: {type(e).__name__}: {e}")
