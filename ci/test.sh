#!/usr/bin/env bash
# The README's test command. Sets up everything on a fresh machine (Python 3.11, pip, root)
# and runs every suite: nox (tests on the local torch, lint, types, the CI torch sweep),
# then Bazel (bazel test //... and the consumer workspace).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check "nox>=2024.4" "uv>=0.4"
export UV_PYTHON_DOWNLOADS=never
export HYPOTHESIS_PROFILE=ci  # property tests derandomized: the gate must not flake
# Local torch wheels, where this machine's pip finds them (nox's uv does not read pip's config).
if [ -z "${SERIALIZER_WHEELS:-}" ]; then
  SERIALIZER_WHEELS="$(python3 -m pip config get global.find-links 2>/dev/null || true)"
  export SERIALIZER_WHEELS="${SERIALIZER_WHEELS%% *}"
fi

echo "== nox: tests, lint, types (local torch)"
python3 -m nox -s tests lint types

echo "== nox: torch version subset (oldest, local, newest)"
python3 -m nox -s sweep_ci

echo "== bazel"
PYTHON_BIN_PATH="$PWD/.nox/tests/bin/python" bash ci/bazel.sh

echo "== all suites passed"
