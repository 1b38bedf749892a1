"""Fast, safe, streaming serialization of PyTorch state dicts.

One stream per `save`; `load` consumes exactly one stream, verifies every byte against its
checksum, and never runs code from the stream under ``weights_only=True`` (the default).
The wire format is specified in docs/FORMAT.md.
"""

from ._api import (
    DEFAULT_PROTOCOL,
    LoadResult,
    StreamIndex,
    TensorEntry,
    load,
    load_into,
    load_keys,
    read_index,
    save,
)
from ._errors import (
    ChecksumError,
    DeviceError,
    FormatError,
    MismatchError,
    SerializerError,
    TruncatedError,
    UnsafeGlobalError,
    UnsupportedError,
    VersionError,
)
from ._format import MAJOR, MINOR, StorageEntry
from ._pickling import add_safe_globals, clear_safe_globals, get_safe_globals, safe_globals
from ._ring import configure_staging

FORMAT_VERSION = (MAJOR, MINOR)
__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PROTOCOL",
    "FORMAT_VERSION",
    "ChecksumError",
    "DeviceError",
    "FormatError",
    "LoadResult",
    "MismatchError",
    "SerializerError",
    "StorageEntry",
    "StreamIndex",
    "TensorEntry",
    "TruncatedError",
    "UnsafeGlobalError",
    "UnsupportedError",
    "VersionError",
    "add_safe_globals",
    "clear_safe_globals",
    "configure_staging",
    "get_safe_globals",
    "load",
    "load_into",
    "load_keys",
    "read_index",
    "safe_globals",
    "save",
]
