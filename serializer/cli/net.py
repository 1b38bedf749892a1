"""`serializer send SRC HOST:PORT` and `serializer recv PORT DST`: streams over TCP.

On the wire is nothing but the stream itself (what ``serializer.save(obj, sock)`` writes), so
either side can be a program that calls `serializer.save` or `serializer.load` on a socket.

send: a `.srlz` source is sent as it is, every stream in the file: it is read through
`serializer.read_index` (which reads every record and checks its checksum) and each byte
read is copied to the socket, so a damaged file is caught and the receiver sees a cut
stream; any other format is loaded and sent with `serializer.save`.

recv: accepts one connection and reads until the sender closes it. To a `.srlz`
destination every byte received is copied while `serializer.read_index` reads and verifies
it, so the file is exactly what was sent, and no tensor is held in memory; to any other
format the stream is loaded and converted. The destination appears (by renaming) only once
everything has arrived intact.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

import serializer

from . import formats, progress
from .errors import OK, CliError


def add_send_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="the file to send (.srlz, or any format of convert)")
    p.add_argument("address", metavar="HOST:PORT", help="where `serializer recv` listens")
    p.add_argument("--from", dest="src_format", choices=formats.FORMATS, metavar="FMT",
                   help="SRC's format (default: from its content or name)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the connection (default 30)")  # fmt: skip


def add_recv_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("port", metavar="PORT", type=int,
                   help="TCP port; 0 picks a free one and prints it")  # fmt: skip
    p.add_argument("dst", metavar="DST", help="the file to write (.srlz, or any format of convert)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    p.add_argument("--to", dest="dst_format", choices=formats.FORMATS, metavar="FMT",
                   help="DST's format (default: from its name)")  # fmt: skip


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT, or [IPv6]:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _streams(source: Any) -> list[serializer.StreamIndex]:
    """Read stream after stream from `source` through `read_index` until it ends cleanly."""
    found = []
    while True:
        try:
            found.append(serializer.read_index(source))
        except serializer.EndOfStream:
            if not found:
                raise
            return found


def send(args: argparse.Namespace) -> int:
    fmt = formats.source_format(args.src, args.src_format)
    obj = None if fmt == "srlz" else formats.read(fmt, args.src, quiet=args.quiet)
    host, port = parse_address(args.address)
    try:
        sock = socket.create_connection((host, port), timeout=args.timeout)
    except OSError as e:
        raise CliError(f"cannot connect to {args.address}: {e}", 1) from e
    with sock:
        sock.settimeout(None)
        if obj is None:
            size = os.path.getsize(args.src)
            with (
                open(args.src, "rb") as f,
                progress.make(f"send {args.src}", size, quiet=args.quiet) as bar,
            ):
                found = _streams(progress.Reader(f, bar, tee=sock.sendall))
            what = f"{len(found)} stream{'s' if len(found) > 1 else ''}, {size} bytes"
        else:
            total = formats.payload_bytes(obj)
            with progress.make(f"send {args.src}", total, quiet=args.quiet) as bar:
                writer = progress.Writer(sock, bar)
                serializer.save(obj, writer)
            what = f"1 stream, {writer.count} bytes"
        sock.shutdown(socket.SHUT_WR)
    if not args.quiet:
        print(f"sent {args.src} to {args.address}: {what}", file=sys.stderr)
    return OK


def recv(args: argparse.Namespace) -> int:
    fmt = formats.target_format(args.dst, args.dst_format)
    try:
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
        server = socket.create_server((args.host, args.port), family=family)
    except OSError as e:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {e}", 1) from e
    with server:
        port = server.getsockname()[1]
        if args.port == 0:
            print(port, flush=True)
        if not args.quiet:
            print(f"listening on {args.host}:{port}", file=sys.stderr, flush=True)
        conn, peer = server.accept()
    with conn:
        with progress.make(f"recv {args.dst}", None, quiet=args.quiet) as bar:
            if fmt == "srlz":
                with formats.replacing(args.dst) as tmp, open(tmp, "wb") as out:
                    found = _streams(progress.Reader(conn, bar, tee=out.write))
                what = f"{len(found)} stream{'s' if len(found) > 1 else ''}, {bar.done} bytes"
            else:
                reader = progress.Reader(conn, bar)
                obj = serializer.load(reader, map_location="cpu")
                try:
                    serializer.read_index(reader)
                except serializer.EndOfStream:
                    pass
                else:
                    raise CliError(f"{fmt} holds one object; the sender sent more than one stream")
        if fmt != "srlz":
            formats.write(fmt, obj, args.dst, quiet=args.quiet)
            what = f"1 stream, {bar.done} bytes"
    if not args.quiet:
        print(f"received {args.dst} from {peer[0]}:{peer[1]}: {what}", file=sys.stderr)
    return OK
