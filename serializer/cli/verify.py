"""`serializer verify SRC`: check every checksum of a stream file, keeping no tensor.

The file is handed to `serializer.read_index` through a wrapper that cannot seek
(`progress.Reader`), so `read_index` reads every record through and checks it against its
checksum, as it does for a socket, instead of seeking past it. That is the cheapest check
that covers every byte: the header checksum, every record's XXH3-64 and the end marker, with
memory bounded by the read buffer. `load(map_location="cpu")` would verify the same bytes but
allocate every tensor; `load_keys(f, [])` would not allocate them, but it only takes a stream
whose object is a mapping. A file of several streams, one after another, is checked to its
end.

Exit status: 0 intact; 1 damaged (`ChecksumError` or `TruncatedError`: the message names the
first bad record and the keys of its tensors); 2 not a stream (any other `FormatError`).
"""

from __future__ import annotations

import argparse
import os

from . import progress
from .errors import OK, emit
from .inspect import indexes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="a serializer stream file (.srlz)")


def run(args: argparse.Namespace) -> int:
    size = os.path.getsize(args.src)
    with progress.make(f"verify {args.src}", size, quiet=args.quiet) as bar:
        found = indexes(args.src, through=True, bar=bar)
    records = sum(len(i.storages) for i in found)
    payload = sum(s.nbytes for i in found for s in i.storages)
    streams = f"{len(found)} streams" if len(found) > 1 else "1 stream"
    emit(
        f"{args.src}: intact: {streams}, {sum(len(i.tensors) for i in found)} tensors, "
        f"{records} records ({payload} bytes of tensor data); every checksum matches "
        f"({size} bytes read)"
    )
    return OK
