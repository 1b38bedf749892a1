"""The exception hierarchy. Every error the library raises on bad input is one of these."""

from __future__ import annotations

import pickle

__all__ = [
    "SerializerError",
    "FormatError",
    "VersionError",
    "TruncatedError",
    "ChecksumError",
    "UnsupportedError",
    "UnsafeGlobalError",
    "MismatchError",
    "DeviceError",
]


class SerializerError(Exception):
    """Base class of every error raised by ``serializer``."""


class FormatError(SerializerError, ValueError):
    """The bytes are not a well-formed stream: wrong magic, bad header, limits exceeded."""


class VersionError(FormatError):
    """The stream was written in a format major version this reader does not know."""


class TruncatedError(FormatError, EOFError):
    """The stream ended before a part of it was complete."""

    def __init__(self, what: str, expected: int, received: int) -> None:
        super().__init__(
            f"stream truncated in {what}: expected {expected} bytes, received {received}"
        )
        self.what = what
        self.expected = expected
        self.received = received


class ChecksumError(FormatError):
    """A part of the stream does not match the checksum stored after it."""

    def __init__(self, what: str, expected: int, found: int) -> None:
        super().__init__(
            f"checksum mismatch in {what}: stored xxh3-64 {expected:016x}, "
            f"computed {found:016x} (the stream is corrupted)"
        )
        self.what = what
        self.expected = expected
        self.found = found


class UnsupportedError(SerializerError, TypeError):
    """``save`` was given something the format cannot represent faithfully."""


class UnsafeGlobalError(SerializerError, pickle.UnpicklingError):
    """A ``weights_only`` load met a global that is not on the allowlist."""


class MismatchError(SerializerError, ValueError):
    """``load_into`` found keys, shapes or dtypes that differ from the destination."""


class DeviceError(SerializerError, RuntimeError):
    """A storage cannot be placed on the device its location or ``map_location`` names."""
