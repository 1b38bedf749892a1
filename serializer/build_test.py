"""Building the loaded object: dotted key paths (`find`), tensors rebuilt as views of their
storage's bytes (`rebuild`), and the data-less outline of a stream."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import serializer
from serializer import _build, _format
from serializer._format import TensorRef
from serializer._read import read_header, reading
from testing.cases import make_tensor

F32 = _format.ID_BY_DTYPE[torch.float32]


class _Holder:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


# ------------------------------------------------------------------------------------ find


def test_find_gives_dotted_paths_in_order() -> None:
    t = [torch.full((1,), float(i)) for i in range(7)]
    obj = {
        "a": t[0],
        "list": [t[1], (t[2], {"deep": t[3]})],
        "obj": _Holder(w=t[4], inner=SimpleNamespace(b=t[5])),
        3: t[6],
        "none": None,
        "text": "not a tensor",
    }
    found = _build.find(obj, torch.Tensor)
    assert [path for path, _ in found] == [
        "a",
        "list.0",
        "list.1.0",
        "list.1.1.deep",
        "obj.w",
        "obj.inner.b",
        "3",
    ]
    assert all(value is t[i] for i, (_, value) in enumerate(found))


def test_find_at_the_root_and_in_ordered_dicts() -> None:
    t = torch.ones(1)
    assert _build.find(t, torch.Tensor) == [("", t)]
    assert _build.find([t], torch.Tensor) == [("0", t)]
    sd = OrderedDict([("z", t), ("a", t)])
    assert [p for p, _ in _build.find(sd, torch.Tensor)] == ["z", "a"]
    assert _build.find({}, torch.Tensor) == []


def test_find_walks_sets_and_names_any_key() -> None:
    t = torch.ones(1)
    obj = {"s": frozenset([t]), ("a", 1): t, True: t, 2.5: t}
    assert _build.find(obj, torch.Tensor) == [
        ("s.0", t),
        ("('a', 1)", t),
        ("True", t),
        ("2.5", t),
    ]
    huge = tuple(range(1000))  # a key from a stream: its name stays short
    [(path, _)] = _build.find({huge: t}, torch.Tensor)
    assert path.startswith("(0, 1, 2") and len(path) < 200


def test_find_lists_a_shared_tensor_under_each_key() -> None:
    t = torch.ones(2)
    found = _build.find({"a": t, "b": t, "c": [t]}, torch.Tensor)
    assert found == [("a", t), ("b", t), ("c.0", t)]


def test_find_lists_a_shared_container_once_and_survives_cycles() -> None:
    t = torch.ones(2)
    shared = {"w": t}
    obj: dict[str, Any] = {"p": shared, "q": shared}
    obj["self"] = obj  # a cycle
    cycle: list[Any] = [t]
    cycle.append(cycle)
    obj["cycle"] = cycle
    found = _build.find(obj, torch.Tensor)
    # A sub-object met again is not walked again: its tensors keep their first path.
    assert [p for p, _ in found] == ["p.w", "cycle.0"]


def test_find_does_not_walk_leaves_or_classes() -> None:
    ref = TensorRef(_format.TENSOR, 0, F32, (2,), (1,), 0, False)  # a NamedTuple: a tuple
    assert _build.find({"ref": ref, "refs": (ref,)}, TensorRef) == [("ref", ref), ("refs.0", ref)]

    class WithTensor:
        table = torch.ones(1)  # a class attribute: not part of any instance's state

    obj = {"cls": WithTensor, "s": "ab", "b": b"ab", "n": 3}
    assert _build.find(obj, torch.Tensor) == []
    assert _build.find(obj, str) == [("s", "ab")]
    assert _build.find({"inst": WithTensor()}, torch.Tensor) == []


# ---------------------------------------------------------------------------------- rebuild


def _storage(values: list[float]) -> torch.Tensor:
    """A storage's bytes: a 1-D uint8 tensor over float32 `values`."""
    return torch.tensor(values, dtype=torch.float32).view(torch.uint8)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_rebuild_a_parameter(requires_grad: bool) -> None:
    data = _storage([float(i) for i in range(8)])
    ref = TensorRef(_format.PARAMETER, 0, F32, (2, 3), (3, 1), 1, requires_grad)
    p = _build.rebuild(ref, data)
    assert type(p) is torch.nn.Parameter
    assert p.requires_grad is requires_grad
    assert p.shape == (2, 3) and p.stride() == (3, 1) and p.storage_offset() == 1
    assert p.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert p.untyped_storage().data_ptr() == data.untyped_storage().data_ptr()  # a view


def test_rebuild_a_tensor_that_requires_grad() -> None:
    data = _storage([1.0, 2.0, 3.0, 4.0])
    t = _build.rebuild(TensorRef(_format.TENSOR, 0, F32, (2,), (2,), 1, True), data)
    assert type(t) is torch.Tensor and t.requires_grad and t.is_leaf
    assert t.tolist() == [2.0, 4.0]
    plain = _build.rebuild(TensorRef(_format.TENSOR, 0, F32, (4,), (1,), 0, False), data)
    assert type(plain) is torch.Tensor and not plain.requires_grad


def test_rebuild_without_data_is_a_meta_tensor() -> None:
    ref = TensorRef(_format.PARAMETER, 0, F32, (2, 5), (1, 2), 7, True)
    p = _build.rebuild(ref, None)
    assert type(p) is torch.nn.Parameter and p.requires_grad
    assert p.device.type == "meta"
    assert (p.shape, p.stride(), p.dtype) == ((2, 5), (1, 2), torch.float32)


def test_rebuild_of_a_dtype_this_torch_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(_format.DTYPE_BY_ID, F32)
    with pytest.raises(serializer.FormatError, match="a tensor of storage 0 has dtype float32"):
        _build.rebuild(TensorRef(_format.TENSOR, 0, F32, (1,), (1,), 0, False), _storage([1.0]))


# ---------------------------------------------------------------------------------- outline


def _header_of(obj: object) -> Any:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    with reading(buf) as stream:
        return read_header(stream.bytes, stream.bytes.read(1, "magic"))


def test_outline_leaves_tensor_refs() -> None:
    w = make_tensor((3, 4), torch.float32)
    p = torch.nn.Parameter(make_tensor((2,), torch.float64), requires_grad=True)
    obj = {"w": w, "nested": [w.t(), {"p": p}], "n": 3, "s": "x"}
    header = _header_of(obj)
    tree = _build.outline(header, True, None, {})
    assert tree["n"] == 3 and tree["s"] == "x"
    w_ref, t_ref, p_ref = tree["w"], tree["nested"][0], tree["nested"][1]["p"]
    assert all(type(r) is TensorRef for r in (w_ref, t_ref, p_ref))
    assert w_ref == TensorRef(_format.TENSOR, 0, F32, (3, 4), (4, 1), 0, False)
    assert t_ref == TensorRef(_format.TENSOR, 0, F32, (4, 3), (1, 4), 0, False)  # same storage
    assert p_ref == TensorRef(
        _format.PARAMETER, 1, _format.ID_BY_DTYPE[torch.float64], (2,), (1,), 0, True
    )
    found = _build.find(tree, TensorRef)
    assert [k for k, _ in found] == ["w", "nested.0", "nested.1.p"]


def test_outline_under_weights_only_still_refuses_unsafe_globals() -> None:
    header = _header_of({"f": pickle.dumps})
    with pytest.raises(serializer.UnsafeGlobalError):
        _build.outline(header, True, None, {})
    assert _build.outline(header, False, pickle, {})["f"] is pickle.dumps


def test_unpickling_decides_as_torch_load() -> None:
    assert _build.unpickling(None, True) == (None, True)  # the restricted unpickler
    assert _build.unpickling(None, False) == (pickle, False)
    assert _build.unpickling(io, False) == (io, False)
    assert _build.unpickling(None, None) == (None, True)  # None: True unless a module is given
    assert _build.unpickling(io, None) == (io, False)
    with pytest.raises(RuntimeError, match="explicit pickle_module"):
        _build.unpickling(pickle, True)
