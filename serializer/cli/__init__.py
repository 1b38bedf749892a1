"""The command line: ``serializer`` (console script) and ``python -m serializer``.

    serializer inspect SRC [--json]          every tensor of a stream file, and totals
    serializer verify SRC                    check every checksum (exit 0 intact, 1 damaged)
    serializer convert SRC DST [--from FMT] [--to FMT]
                                             .srlz, torch.save, torch streams, safetensors, DCP
    serializer send SRC HOST:PORT            one file's stream(s) over TCP
    serializer recv PORT DST [--host H]      receive them (port 0: pick one and print it)
    serializer demo                          stream a model to another process, side by side
                                             with torch

A client package of the public `serializer` API, one module per command (`inspect`,
`verify`, `convert`, `net`; the demo is `serializer.cli.demo`), with the formats `convert`
reads and writes in `formats` and progress display in `progress`. Exit statuses: `errors`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import serializer

from . import convert, demo, inspect, net, verify
from .errors import INVALID, classify

__all__ = ["main"]


def _demo() -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int], str]:
    return demo.add_arguments, demo.run, demo.__doc__ or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serializer",
        description="Fast, safe, streaming serialization of PyTorch state dicts: inspect, "
        "verify, convert and send streams.",
        epilog="Exit status: 0 done; 1 damaged data (checksum mismatch, truncated stream) or "
        "a failed read, write or connection; 2 not a stream, a conversion the target cannot "
        "hold, or a usage error.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version="serializer {} (stream format {}.{})".format(
            serializer.__version__, *serializer.FORMAT_VERSION
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress display (default: a bar on a terminal, plain lines otherwise)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str,
        add: Callable[[argparse.ArgumentParser], None],
        run: Callable[[argparse.Namespace], int],
        summary: str,
        doc: str | None,
    ) -> None:
        p = sub.add_parser(
            name, parents=[common], help=summary, description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        add(p)
        p.set_defaults(run=run)

    command("inspect", inspect.add_arguments, inspect.run,
            "list every tensor of a stream file (key, dtype, shape, bytes, location), with totals",
            inspect.__doc__)  # fmt: skip
    command("verify", verify.add_arguments, verify.run,
            "check every checksum of a stream file: exit 0 intact, 1 damaged, 2 not a stream",
            verify.__doc__)  # fmt: skip
    command("convert", convert.add_arguments, convert.run,
            "convert between .srlz, torch.save, torch streams, safetensors and DCP, bit for bit",
            convert.__doc__)  # fmt: skip
    command("send", net.add_send_arguments, net.send,
            "send a file's stream over TCP to `serializer recv` (or to serializer.load)",
            net.__doc__)  # fmt: skip
    command("recv", net.add_recv_arguments, net.recv,
            "receive a stream over TCP into a file (binds 127.0.0.1 unless --host)",
            net.__doc__)  # fmt: skip
    add_demo, run_demo, demo_doc = _demo()
    command("demo", add_demo, run_demo,
            "stream a model's state dict to another process, side by side with torch",
            demo_doc)  # fmt: skip
    return parser


def _where(args: argparse.Namespace) -> str:
    """What a command works on, to begin its error messages."""
    if args.command == "recv":
        return str(args.dst)
    return str(getattr(args, "src", args.command))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return INVALID
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        error = classify(e, _where(args))
        if error is None:
            raise
        if str(error):
            print(f"serializer {args.command}: {error}", file=sys.stderr)
        return error.status
    return status
