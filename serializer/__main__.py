"""Command line: ``python -m serializer demo`` (see serializer/demo.py)."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] != "demo":
        raise SystemExit("usage: python -m serializer demo [--layers N] [--width N] [--help]")
    from .demo import main as demo

    demo(sys.argv[2:])


if __name__ == "__main__":
    main()
