"""Fast, safe, streaming serialization of PyTorch state dicts.

One stream per `save`; `load` consumes exactly one stream, verifies every byte against its
checksum, and never runs code from the stream under ``weights_only=True`` (the default).
The wire format is specified in docs/FORMAT.md; docs/ARCHITECTURE.md shows where each part
of this package lives. This module is the whole public surface.
"""

from ._allowlist import add_safe_globals, clear_safe_globals, get_safe_globals, safe_globals
from ._errors import (
    ChecksumError,
    DeviceError,
    EndOfStream,
    FormatError,
    MismatchError,
    SerializerError,
    TruncatedError,
    UnsafeGlobalError,
    UnsupportedError,
    VersionError,
)
from ._format import MAJOR, MINOR, StorageEntry, TensorRef
from ._index import StreamIndex, TensorEntry, read_index
from ._inplace import LoadResult, load_into
from ._load import iter_load, load, load_keys
from ._open import StreamFile, open
from ._registry import TensorCodec, register_codec
from ._ring import configure_staging
from ._save import DEFAULT_PROTOCOL, save

FORMAT_VERSION = (MAJOR, MINOR)
__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PROTOCOL",
    "FORMAT_VERSION",
    "ChecksumError",
    "DeviceError",
    "EndOfStream",
    "FormatError",
    "LoadResult",
    "MismatchError",
    "SerializerError",
    "StorageEntry",
    "StreamFile",
    "StreamIndex",
    "TensorCodec",
    "TensorEntry",
    "TensorRef",
    "TruncatedError",
    "UnsafeGlobalError",
    "UnsupportedError",
    "VersionError",
    "add_safe_globals",
    "clear_safe_globals",
    "configure_staging",
    "get_safe_globals",
    "iter_load",
    "load",
    "load_into",
    "load_keys",
    "open",
    "read_index",
    "register_codec",
    "safe_globals",
    "save",
]
