"""pytest fixtures over the shared catalog; loaded with ``-p testing.pytest_plugin``.

- ``case``: parametrized over every `testing.cases.Case` (ids are the case names).
- ``transport``: parametrized over `testing.transports.TRANSPORTS` (a function
  ``transport(obj, load) -> loaded``).
- ``cuda_device``: a CUDA device; tests using it, or marked ``gpu``, skip where none is present.
- ``gloo_mesh``: a CPU DeviceMesh over a one-rank gloo group in this process
  (`testing.distributed.single_rank_group`), destroyed after the test.
- Hypothesis profiles: ``HYPOTHESIS_PROFILE=ci`` (set by ci/test.sh) derandomizes property
  tests so that a gate does not flake; left unset, each run explores new examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from testing.cases import Case, catalog
from testing.distributed import single_rank_group
from testing.transports import TRANSPORTS


def pytest_configure(config: pytest.Config) -> None:
    try:
        from hypothesis import settings
    except ImportError:  # hypothesis is a test dependency of ours, not of the plugin's users
        return
    settings.register_profile("ci", derandomize=True, print_blob=True)
    profile = os.environ.get("HYPOTHESIS_PROFILE")
    if profile:  # else hypothesis's own --hypothesis-profile option decides
        settings.load_profile(profile)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = catalog()
        metafunc.parametrize("case", cases, ids=[c.name for c in cases])
    if "transport" in metafunc.fixturenames:
        metafunc.parametrize("transport", list(TRANSPORTS.values()), ids=list(TRANSPORTS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda_device() -> Any:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; torch.cuda.is_available() is False")
    return torch.device("cuda", 0)


@pytest.fixture
def gloo_mesh() -> Iterator[Any]:
    """A CPU DeviceMesh over a one-rank gloo group, destroyed after the test."""
    with single_rank_group() as mesh:
        yield mesh


__all__ = ["Case"]
