"""Runs pytest inside a Bazel test (the main of every pytest_test, see pytest.bzl).

Usage: pytest_runner.py CONFIG [PYTEST_ARGS...]. Run from the runfiles root of the test's
workspace (Bazel's working directory for tests), which becomes pytest's rootdir and goes on
sys.path. Maps Bazel's test environment onto pytest:

- TEST_TOTAL_SHARDS / TEST_SHARD_INDEX / TEST_SHARD_STATUS_FILE: read by the sharding plugin
  (testing/sharding.py, loaded by the config); an empty shard (exit code 5) passes;
- TESTBRIDGE_TEST_ONLY (`bazel test --test_filter=EXPR`): `pytest -k EXPR`;
- XML_OUTPUT_FILE: JUnit XML;
- TEST_TMPDIR: pytest's --basetemp and cache dir, Hypothesis' database, and HOME if unset.
"""

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    config, rest = argv[0], argv[1:]
    root = os.getcwd()
    if root not in sys.path:
        sys.path.insert(0, root)
    args = ["-c", config, "--rootdir", root]
    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        args += ["--basetemp", os.path.join(tmp, "pytest")]
        args += ["-o", "cache_dir=" + os.path.join(tmp, "pytest_cache")]
        os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tmp, "hypothesis"))
        os.environ.setdefault("HOME", tmp)  # unset by Bazel; caches (torch, triton) go here
    if os.environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", os.environ["XML_OUTPUT_FILE"]]
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    code = pytest.main(args + rest)
    sharded = int(os.environ.get("TEST_TOTAL_SHARDS", "1")) > 1
    status_file = os.environ.get("TEST_SHARD_STATUS_FILE")
    if sharded and status_file and not os.path.exists(status_file):
        print(f"{__file__}: sharded, but the config did not load testing.sharding", file=sys.stderr)
        return 1
    if code == pytest.ExitCode.NO_TESTS_COLLECTED and sharded:
        return 0  # an empty shard: more shards than (selected) tests
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
