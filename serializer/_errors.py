"""The exception hierarchy. Every error the library raises on bad input is one of these.

Errors about a part of the stream carry what is known of it as attributes (which part, which
storage, the keys of the tensors that use it, how many bytes were expected and received, the
stored and computed checksums); their messages are built from those attributes, never parsed.
"""

from __future__ import annotations

import pickle
import reprlib
from collections.abc import Sequence

__all__ = [
    "SerializerError",
    "FormatError",
    "VersionError",
    "TruncatedError",
    "ChecksumError",
    "EndOfStream",
    "UnsupportedError",
    "UnsafeGlobalError",
    "MismatchError",
    "DeviceError",
]

_KEYS_SHOWN = 3

_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxstring = _short.maxother = 80


def short_repr(obj: object) -> str:
    """A repr of at most a few hundred characters that takes time bounded by its length,
    for objects from a stream (a shared nested tuple's full repr can take forever)."""
    return _short.repr(obj)


class SerializerError(Exception):
    """Base class of every error raised by ``serializer``."""


class FormatError(SerializerError, ValueError):
    """The bytes are not a well-formed stream: wrong magic, bad header, limits exceeded."""


class VersionError(FormatError):
    """The stream was written in a format major version this reader does not know."""


class _PartError(FormatError):
    """An error in one part of the stream: `what` names the part (e.g. "preamble"); for a
    storage's record, `storage` is its index, and `nbytes` and `keys` (the dotted keys of the
    tensors that use it) are filled in where the reader knows them."""

    what: str
    storage: int | None
    nbytes: int | None
    keys: tuple[str, ...]

    def _locate(
        self, what: str, storage: int | None, nbytes: int | None, keys: Sequence[str]
    ) -> str:
        self.what = what
        self.storage = storage
        self.nbytes = nbytes
        self.keys = tuple(keys)
        if storage is None or nbytes is None:
            return what
        used = ""
        if self.keys:
            shown = ", ".join(repr(k) for k in self.keys[:_KEYS_SHOWN])
            used = f", used by {shown}{' ...' if len(self.keys) > _KEYS_SHOWN else ''}"
        return f"{what} ({nbytes} bytes{used})"


class TruncatedError(_PartError, EOFError):
    """The stream ended before a part of it was complete."""

    def __init__(
        self,
        what: str,
        expected: int,
        received: int,
        *,
        storage: int | None = None,
        nbytes: int | None = None,
        keys: Sequence[str] = (),
    ) -> None:
        where = self._locate(what, storage, nbytes, keys)
        super().__init__(
            f"stream truncated in {where}: expected {expected} bytes, received {received}"
        )
        self.expected = expected
        self.received = received

    def located(self, nbytes: int, keys: Sequence[str]) -> TruncatedError:
        """The same error, with its storage's size and keys."""
        return TruncatedError(
            self.what, self.expected, self.received, storage=self.storage, nbytes=nbytes, keys=keys
        )


class ChecksumError(_PartError):
    """A part of the stream does not match the checksum stored after it."""

    def __init__(
        self,
        what: str,
        expected: int,
        found: int,
        *,
        storage: int | None = None,
        nbytes: int | None = None,
        keys: Sequence[str] = (),
    ) -> None:
        where = self._locate(what, storage, nbytes, keys)
        super().__init__(
            f"checksum mismatch in {where}: stored xxh3-64 {expected:016x}, "
            f"computed {found:016x} (the stream is corrupted)"
        )
        self.expected = expected
        self.found = found

    def located(self, nbytes: int, keys: Sequence[str]) -> ChecksumError:
        """The same error, with its storage's size and keys."""
        return ChecksumError(
            self.what, self.expected, self.found, storage=self.storage, nbytes=nbytes, keys=keys
        )


class EndOfStream(SerializerError, EOFError):
    """The source ended cleanly where a stream could begin: there are no more streams.
    (A source that ends inside a stream raises `TruncatedError` instead.)"""


class UnsupportedError(SerializerError, TypeError):
    """``save`` was given something the format cannot represent faithfully."""


class UnsafeGlobalError(SerializerError, pickle.UnpicklingError):
    """A ``weights_only`` load met a global that is not on the allowlist, or an operation
    on objects that torch's weights_only rules (or this library's stricter ones) refuse."""


class MismatchError(SerializerError, ValueError):
    """``load_into`` found keys, shapes or dtypes that differ from the destination."""


class DeviceError(SerializerError, RuntimeError):
    """A storage cannot be placed on the device its location or ``map_location`` names."""
