"""Property tests: nested structures of catalog tensors and Python values round-trip."""

from __future__ import annotations

import io

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import serializer
from testing.cases import assert_same, available_dtypes, make_tensor
from testing.transports import via_pipe

_DTYPES = available_dtypes()


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    t = make_tensor(shape, dtype, seed=draw(st.integers(0, 1000)))
    view = draw(st.sampled_from(["plain", "transpose", "slice", "expand"]))
    if view == "transpose" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif view == "slice" and t.dim() >= 1 and t.shape[0] > 1:
        t = t[1::2]
    elif view == "expand" and t.dim() >= 1 and t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    return t


leaves = st.one_of(
    tensors(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.booleans(),
    st.none(),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_round_trip_bytesio(obj: object) -> None:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    assert_same(serializer.load(buf), obj)
    assert buf.read() == b""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_round_trip_pipe(obj: object) -> None:
    assert_same(via_pipe(obj, serializer.load), obj)


@settings(max_examples=100, deadline=None)
@given(trees, st.data())
def test_any_cut_raises(obj: object, data: st.DataObject) -> None:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    stream = buf.getvalue()
    cut = data.draw(st.integers(1, len(stream) - 1))  # 0 bytes is EndOfStream: a clean end
    try:
        serializer.load(io.BytesIO(stream[:cut]))
    except serializer.TruncatedError:
        return
    raise AssertionError(f"a stream cut at {cut} of {len(stream)} bytes loaded")
