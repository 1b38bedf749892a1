"""``python -m serializer``: the command line (see serializer/cli/__init__.py), e.g.
``python -m serializer demo`` or ``python -m serializer inspect model.srlz``."""

from __future__ import annotations

from serializer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
