"""pytest plugin: run one shard of the collected tests.

    pytest --shard-count N --shard-index I

Sorts the collected items by node id and keeps those whose position modulo N is I; the rest
are deselected. Every shard sees the same collection, so the N shards together run each test
exactly once. Without the options, TEST_TOTAL_SHARDS and TEST_SHARD_INDEX (set by Bazel for a
target with `shard_count`) are used; the options win. A count of 1 or less means no sharding.
TEST_SHARD_STATUS_FILE, when set, is touched to tell Bazel that sharding is supported.
Loaded for every run by pyproject.toml's addopts (`-p testing.sharding`).
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sharding")
    group.addoption(
        "--shard-count",
        type=int,
        default=None,
        help="split the tests into this many shards (default: $TEST_TOTAL_SHARDS or 1)",
    )
    group.addoption(
        "--shard-index",
        type=int,
        default=None,
        help="run the shard of this 0-based index (default: $TEST_SHARD_INDEX or 0)",
    )


def _shard(config: pytest.Config) -> tuple[int, int]:
    count = config.getoption("shard_count")
    index = config.getoption("shard_index")
    if count is None:
        count = int(os.environ.get("TEST_TOTAL_SHARDS") or 1)
    if index is None:
        index = int(os.environ.get("TEST_SHARD_INDEX") or 0)
    return count, index


def pytest_configure(config: pytest.Config) -> None:
    count, index = _shard(config)
    if count > 1 and not 0 <= index < count:
        raise pytest.UsageError(f"shard index {index} is not in [0, {count})")
    status_file = os.environ.get("TEST_SHARD_STATUS_FILE")
    if status_file:
        open(status_file, "a").close()


def pytest_report_header(config: pytest.Config) -> str | None:
    count, index = _shard(config)
    return f"shard {index + 1} of {count}" if count > 1 else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    count, index = _shard(config)
    if count <= 1:
        return
    ordered = sorted(range(len(items)), key=lambda i: items[i].nodeid)
    keep = {i for position, i in enumerate(ordered) if position % count == index}
    deselected = [item for i, item in enumerate(items) if i not in keep]
    items[:] = [item for i, item in enumerate(items) if i in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
