"""testing/cases.py's dtypes against the format's dtype table.

The catalog must cover every dtype of the format that the running torch has, and use no
dtype the format lacks. The table is read from serializer._format, the one module that holds
it (the public API names no dtype ids): this file checks the catalog against the format, so
it may look inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from serializer import _format
from testing.cases import FORMAT_DTYPES, available_dtypes, catalog

TABLE_NAMES = [name for name, _ in _format.DTYPE_TABLE.values()]
# The format's dtypes that the running torch has.
RUNNING = set(_format.DTYPE_BY_ID.values())


def _dtypes_in(obj: Any) -> Iterator[torch.dtype]:
    """The dtype of every tensor in obj, and every dtype object it holds."""
    if isinstance(obj, torch.Tensor):
        yield obj.dtype
    elif isinstance(obj, torch.dtype):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _dtypes_in(value)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            yield from _dtypes_in(value)


def _catalog_dtypes() -> dict[torch.dtype, list[str]]:
    """Every dtype the catalog's cases use, with the cases that use it."""
    used: dict[torch.dtype, list[str]] = {}
    for case in catalog():
        for dtype in set(_dtypes_in(case.build("cpu"))):
            used.setdefault(dtype, []).append(case.name)
    return used


def test_format_dtypes_list_is_the_table() -> None:
    assert len(set(FORMAT_DTYPES)) == len(FORMAT_DTYPES), "FORMAT_DTYPES repeats a name"
    missing = sorted(set(TABLE_NAMES) - set(FORMAT_DTYPES))
    extra = sorted(set(FORMAT_DTYPES) - set(TABLE_NAMES))
    assert not missing, f"dtypes of the format's table missing from FORMAT_DTYPES: {missing}"
    assert not extra, f"FORMAT_DTYPES names dtypes the format's table lacks: {extra}"


def test_available_dtypes_are_the_formats_on_this_torch() -> None:
    available = available_dtypes()
    assert len(set(available)) == len(available)
    assert set(available) == RUNNING, (
        f"available_dtypes() {sorted(map(str, available))} != the format's dtypes that torch "
        f"{torch.__version__} has {sorted(map(str, RUNNING))}"
    )


def test_catalog_covers_every_format_dtype_of_this_torch() -> None:
    used = _catalog_dtypes()
    uncovered = sorted(str(d) for d in RUNNING - set(used))
    assert not uncovered, f"the catalog has no case with a tensor of {uncovered}"
    # Each has its own dtype case, whose tensors are of that dtype alone.
    dtype_cases = {c.name: c for c in catalog() if "dtype" in c.tags}
    for dtype in RUNNING:
        name = f"dtype-{str(dtype).removeprefix('torch.')}"
        assert name in dtype_cases, f"no case {name}"
        assert set(_dtypes_in(dtype_cases[name].build("cpu"))) == {dtype}, name


def test_catalog_uses_only_format_dtypes() -> None:
    outside = {str(d): cases for d, cases in _catalog_dtypes().items() if d not in RUNNING}
    assert not outside, f"the catalog uses dtypes the format's table lacks: {outside}"


def test_element_sizes_match_torch() -> None:
    for dtype_id, dtype in _format.DTYPE_BY_ID.items():
        name, size = _format.DTYPE_TABLE[dtype_id]
        assert str(dtype) == f"torch.{name}"
        assert size == torch.empty(0, dtype=dtype).element_size(), (
            f"the format says {name} has {size} bytes, torch {torch.__version__} says "
            f"{torch.empty(0, dtype=dtype).element_size()}"
        )
