"""`serializer convert SRC DST [--from FMT] [--to FMT]`: between this format, torch.save
files, torch streams, safetensors and DCP checkpoint directories, bit for bit.

The source's format is what its bytes show (a directory is DCP), else what its name
implies; the destination's, what its name implies (``formats.target_format``). The whole
object is loaded on CPU, checked against what the destination can hold (safetensors: a flat
dict of tensors of its dtypes, no two sharing a storage; DCP: a dict with string keys), then
written. See `formats` for how each format is read and written.
"""

from __future__ import annotations

import argparse

from . import formats
from .errors import OK, emit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="the file (or DCP directory) to read")
    p.add_argument("dst", metavar="DST", help="the file (or DCP directory) to write")
    p.add_argument("--from", dest="src_format", choices=formats.FORMATS, metavar="FMT",
                   help=f"SRC's format, one of {', '.join(formats.FORMATS)} "
                        "(default: from its content or name)")  # fmt: skip
    p.add_argument("--to", dest="dst_format", choices=formats.FORMATS, metavar="FMT",
                   help="DST's format (default: from its name: .srlz, .pt/.pth, .safetensors, "
                        "a trailing / or .dcp for a DCP directory)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    src_format = formats.source_format(args.src, args.src_format)
    dst_format = formats.target_format(args.dst, args.dst_format)
    obj = formats.read(src_format, args.src, quiet=args.quiet)
    formats.write(dst_format, obj, args.dst, quiet=args.quiet)
    if not args.quiet:
        n = sum(1 for _ in formats.tensors(obj))
        emit(f"{args.src} ({src_format}) -> {args.dst} ({dst_format}): {n} tensors")
    return OK
