"""torchft checkpoint transports on this library's streams: a recovering replica receives a
healthy one's live state dict over HTTP (`HTTPTransport`) or a process group
(`PGTransport`), loaded with ``weights_only=True``. A client package of the public
`serializer` API; docs/TRANSPORTS.md has the details.

Both implement torchft's `CheckpointTransport` interface (and subclass it where torchft is
installed: ``pip install serializer[transports]``), and work without torchft.
"""

from ._common import (
    CheckpointTransport,
    StepMismatchError,
    TransportError,
    TransportTimeoutError,
)
from .http_transport import HTTPTransport
from .pg_transport import PGTransport

__all__ = [
    "CheckpointTransport",
    "HTTPTransport",
    "PGTransport",
    "StepMismatchError",
    "TransportError",
    "TransportTimeoutError",
]
