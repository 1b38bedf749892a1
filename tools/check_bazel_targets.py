"""Fails when a *_test.py file of a Bazel workspace is not the source of a Bazel test target.

    python tools/check_bazel_targets.py [--workspace DIR] [--bazel BAZEL]

Asks Bazel (`bazel query 'labels(srcs, tests(//...))'`) which files the test targets run,
and compares with the *_test.py files on disk, leaving out what Bazel does not see either:
the paths in .bazelignore, hidden directories, bazel-* output links, virtual environments
and nested workspaces (which have their own targets; check them with --workspace).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def test_files(root: str) -> set[str]:
    ignored = set()
    if os.path.exists(os.path.join(root, ".bazelignore")):
        with open(os.path.join(root, ".bazelignore")) as f:
            ignored = {os.path.normpath(line.strip()) for line in f if line.strip()}
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != "." and (
            rel in ignored
            or os.path.basename(rel).startswith((".", "bazel-"))
            or {"WORKSPACE", "WORKSPACE.bazel", "pyvenv.cfg"} & set(filenames)
        ):
            dirnames[:] = []
            continue
        found.update(
            os.path.normpath(os.path.join(rel, name))
            for name in filenames
            if name.endswith("_test.py")
        )
    return found


def test_sources(root: str, bazel: str) -> set[str]:
    query = subprocess.run(
        [bazel, "query", "labels(srcs, tests(//...))", "--output=label"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if query.returncode != 0:
        sys.exit(f"{query.stderr}check_bazel_targets: `bazel query` failed in {root}")
    sources = set()
    for label in query.stdout.split():
        if label.startswith("@") and not label.startswith("@//"):
            continue  # another repository's file
        package, _, name = label.lstrip("@").removeprefix("//").partition(":")
        sources.add(os.path.normpath(os.path.join(package, name)))
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=".", help="the workspace root (default: .)")
    parser.add_argument("--bazel", default="bazel", help="the bazel command (default: bazel)")
    args = parser.parse_args(argv)
    files = test_files(args.workspace)
    missing = sorted(files - test_sources(args.workspace, args.bazel))
    for path in missing:
        print(f"{path}: not a Bazel test target (no pytest_suite/pytest_test in its package?)")
    if missing:
        return 1
    print(
        f"check_bazel_targets: all {len(files)} *_test.py files of "
        f"{os.path.abspath(args.workspace)} are Bazel test targets"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
