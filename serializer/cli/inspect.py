"""`serializer inspect SRC [--json]`: every tensor of a stream file, and totals.

Reads with `serializer.read_index`, which reads only the headers where the file can seek
(it skips each stream's records; `verify` reads them). A file of several streams written one
after another lists each.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import serializer

from . import formats, progress
from .errors import OK, CliError, damaged, emit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="a serializer stream file (.srlz)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def indexes(
    path: str, *, through: bool = False, bar: progress.Progress | None = None
) -> list[serializer.StreamIndex]:
    """The index of every stream in the file at `path`.

    `through`: read every byte and so verify every checksum (`read_index` reads a source it
    cannot seek through), counting into `bar`; else skip the records by seeking.
    """
    found = []
    with open(path, "rb") as f:
        source = progress.Reader(f, bar) if through else f
        while True:
            try:
                found.append(serializer.read_index(source))
            except serializer.EndOfStream:
                if not found:
                    raise
                return found
            except serializer.FormatError as e:
                if not found:
                    error = not_a_stream(path, e)
                    if error is e:
                        raise
                    raise error from e
                offset = sum(i.nbytes for i in found)
                where = f"{path} (stream {len(found) + 1}, at byte {offset})"
                if isinstance(e, (serializer.ChecksumError, serializer.TruncatedError)):
                    raise damaged(e, where) from e
                raise CliError(f"{where}: {e}") from e


def not_a_stream(path: str, error: Exception) -> Exception:
    """`error`, with what the file looks like if it is a file `convert` reads."""
    fmt = formats.sniff(path)
    if fmt == "srlz":  # the magic is right: the library's error says what is wrong
        return error
    if fmt is None:
        return CliError(f"{path}: not a serializer stream: {error}")
    return CliError(
        f"{path}: not a serializer stream; it looks like {fmt} (serializer convert {path} "
        f"OUT.srlz makes one)"
    )


def _dtype(d: Any) -> str:
    return str(d).removeprefix("torch.")


def to_json(path: str, found: list[serializer.StreamIndex]) -> dict[str, Any]:
    streams = []
    offset = 0
    for index in found:
        keys_of: dict[int, list[str]] = {}
        for t in index.tensors:
            keys_of.setdefault(t.storage, []).append(t.key)
        streams.append({
            "offset": offset,
            "nbytes": index.nbytes,
            "format_version": f"{index.version[0]}.{index.version[1]}",
            "tensors": [
                {
                    "key": t.key, "dtype": _dtype(t.dtype), "shape": list(t.shape),
                    "nbytes": t.nbytes, "location": t.location, "stride": list(t.stride),
                    "storage_offset": t.storage_offset, "storage": t.storage,
                    "requires_grad": t.requires_grad, "parameter": t.parameter,
                }
                for t in index.tensors
            ],
            "storages": [
                {"index": i, "nbytes": s.nbytes, "location": s.location, "keys": keys_of.get(i, [])}
                for i, s in enumerate(index.storages)
            ],
            "totals": _totals([index]),
        })  # fmt: skip
        offset += index.nbytes
    return {"path": path, "streams": streams, "totals": _totals(found)}


def _totals(found: list[serializer.StreamIndex]) -> dict[str, int]:
    return {
        "streams": len(found),
        "tensors": sum(len(i.tensors) for i in found),
        "tensor_bytes": sum(t.nbytes for i in found for t in i.tensors),
        "storages": sum(len(i.storages) for i in found),
        "storage_bytes": sum(s.nbytes for i in found for s in i.storages),
        "stream_bytes": sum(i.nbytes for i in found),
    }


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _summary(totals: dict[str, int]) -> str:
    return (
        f"{totals['tensors']} tensors, {totals['tensor_bytes']} bytes; "
        f"{totals['storages']} storages, {totals['storage_bytes']} bytes; "
        f"{totals['stream_bytes']} bytes in all"
    )


def to_text(path: str, found: list[serializer.StreamIndex]) -> str:
    lines = []
    offset = 0
    for n, index in enumerate(found):
        where = f" {n + 1} of {len(found)}, at byte {offset}" if len(found) > 1 else ""
        lines.append(
            f"{path}: serializer stream{where}, format {index.version[0]}.{index.version[1]}, "
            f"{index.nbytes} bytes"
        )
        rows = [["key", "dtype", "shape", "bytes", "location", "storage"]]
        for t in index.tensors:
            rows.append([
                t.key, _dtype(t.dtype), "[" + ", ".join(map(str, t.shape)) + "]", str(t.nbytes),
                t.location, str(t.storage),
            ])  # fmt: skip
        lines.extend("  " + line for line in _table(rows, right={3, 5}))
        lines.append("  " + _summary(_totals([index])))
        offset += index.nbytes
    if len(found) > 1:
        lines.append(f"all {len(found)} streams: " + _summary(_totals(found)))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    found = indexes(args.src)
    if args.json:
        emit(json.dumps(to_json(args.src, found), indent=2))
    else:
        emit(to_text(args.src, found))
    return OK
