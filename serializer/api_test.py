"""Round trips of the whole catalog over every transport, and the API's semantics."""

from __future__ import annotations

import collections
import io
import os
import pickle

import pytest
import torch

import serializer
from serializer import _records
from testing.cases import Case, MyClass, assert_same, make_tensor, same_bits
from testing.transports import save_in_subprocess


def _load(weights_only: bool):
    return lambda f: serializer.load(f, weights_only=weights_only)


def test_catalog_round_trip(case: Case, transport) -> None:
    obj = case.build("cpu")
    assert_same(transport(obj, _load(case.weights_only)), obj)


def test_catalog_round_trip_from_another_process(case: Case) -> None:
    r, w = os.pipe()
    proc = save_in_subprocess(case.name, w)
    os.close(w)
    with open(r, "rb", buffering=0) as f:
        loaded = serializer.load(f, weights_only=case.weights_only)
        assert f.read() == b"", "load left bytes of its stream unread"
    assert proc.wait(60) == 0
    assert_same(loaded, case.build("cpu"))


def test_streams_back_to_back_on_one_pipe() -> None:
    objs = [{"a": make_tensor((100,), torch.float32, seed=i), "i": i} for i in range(3)]
    buf = io.BytesIO()
    for obj in objs:
        serializer.save(obj, buf)
    buf.seek(0)
    for obj in objs:
        assert_same(serializer.load(buf), obj)
    assert buf.read() == b""


def test_loaded_tensors_are_writable_and_own_memory() -> None:
    out = serializer.load(_bytes({"t": torch.zeros(4)}))
    out["t"] += 1  # no read-only warning, no aliasing of a bytes object
    assert out["t"].tolist() == [1.0] * 4


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def test_weights_only_refuses_user_class_with_torch_message() -> None:
    buf = _bytes({"obj": MyClass(42)})
    with pytest.raises(pickle.UnpicklingError, match="not an allowed global"):
        serializer.load(buf)
    buf.seek(0)
    with pytest.raises(serializer.UnsafeGlobalError, match="add_safe_globals"):
        serializer.load(buf)


def test_explicit_pickle_module_with_weights_only_is_refused() -> None:
    with pytest.raises(RuntimeError, match="explicit pickle_module"):
        serializer.load(_bytes({}), weights_only=True, pickle_module=pickle)


def test_weights_only_false_restores_objects_with_explicit_pickle_module() -> None:
    obj = {"obj": MyClass(7), "t": torch.ones(2)}
    assert_same(serializer.load(_bytes(obj), weights_only=False, pickle_module=pickle), obj)


def test_allowlist_apis() -> None:
    obj = {"obj": MyClass(3)}
    with serializer.safe_globals([MyClass]):
        assert serializer.load(_bytes(obj)) == obj
    with pytest.raises(serializer.UnsafeGlobalError):
        serializer.load(_bytes(obj))
    serializer.add_safe_globals([MyClass])
    try:
        assert MyClass in serializer.get_safe_globals()
        assert serializer.load(_bytes(obj)) == obj
    finally:
        serializer.clear_safe_globals()
    with pytest.raises(serializer.UnsafeGlobalError):
        serializer.load(_bytes(obj))


def test_torch_allowlist_is_honoured() -> None:
    if not hasattr(torch.serialization, "safe_globals"):
        pytest.skip("this torch has no torch.serialization.safe_globals (added in 2.5)")
    obj = {"obj": MyClass(5)}
    with torch.serialization.safe_globals([MyClass]):
        assert serializer.load(_bytes(obj)) == obj


def test_map_location_cpu_forms() -> None:
    obj = {"t": make_tensor((3,), torch.float32)}
    for loc in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda s, loc: s, lambda s, loc: None):
        assert_same(serializer.load(_bytes(obj), map_location=loc), obj)


def test_map_location_callable_sees_location_and_storage() -> None:
    seen = []

    def where(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        seen.append((location, storage.nbytes()))
        return storage

    serializer.load(
        _bytes({"a": torch.ones(3), "b": torch.ones(2, dtype=torch.int64)}), map_location=where
    )
    assert seen == [("cpu", 12), ("cpu", 16)]


def test_cuda_location_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="map_location"):
        serializer.load(_bytes({"t": torch.ones(1)}), map_location="cuda:0")


def test_unsupported_tensors_are_refused_at_save() -> None:
    cases = {
        "sparse": torch.eye(3).to_sparse(),
        "quantized": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8),
        "meta": torch.empty(2, device="meta"),
        "nested": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
        "storage": torch.ones(2).untyped_storage(),
    }
    for name, value in cases.items():
        with pytest.raises(serializer.UnsupportedError):
            serializer.save({name: value}, io.BytesIO())


def test_views_of_one_storage_as_different_sizes_are_refused() -> None:
    t = torch.zeros(4)
    with pytest.raises(serializer.UnsupportedError, match="element sizes"):
        serializer.save({"a": t, "b": t.view(torch.uint8)}, io.BytesIO())


def test_subclass_refused() -> None:
    class Sub(torch.Tensor):
        pass

    with pytest.raises(serializer.UnsupportedError, match="subclass"):
        serializer.save({"t": torch.ones(2).as_subclass(Sub)}, io.BytesIO())


def test_text_stream_refused() -> None:
    with pytest.raises(TypeError, match="binary"):
        serializer.save({}, io.StringIO())


def test_save_writes_whole_base_storage_once() -> None:
    base = torch.zeros(1000)
    one = _bytes({"a": base[::2], "b": base[1::2]}).getvalue()
    two = _bytes({"a": base.clone()}).getvalue()
    assert abs(len(one) - len(two)) < 200  # one storage of 4000 bytes either way


def _identities(obj: dict[str, object]) -> list[tuple[str, str]]:
    """The pairs of keys whose values are one object."""
    keys = sorted(obj)
    return [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :] if obj[a] is obj[b]]


def test_the_same_tensor_twice_loads_as_one_object_as_in_torch() -> None:
    t = make_tensor((6,), torch.float32)
    tied = torch.nn.Parameter(make_tensor((3,), torch.float32))
    obj = {"a": t, "b": t, "view": t[1:], "equal": t.view(6), "p": tied, "q": tied}
    torch_buf = io.BytesIO()
    torch.save(obj, torch_buf)
    torch_buf.seek(0)
    want = _identities(torch.load(torch_buf))
    loaded = serializer.load(_bytes(obj))
    assert _identities(loaded) == want == [("a", "b"), ("p", "q")]
    assert loaded["view"].untyped_storage().data_ptr() == loaded["a"].untyped_storage().data_ptr()
    loaded["a"][0] = 42.0
    assert loaded["b"][0] == 42.0 and loaded["equal"][0] == 42.0


def test_load_keys_selects_and_skips() -> None:
    sd = collections.OrderedDict(
        a=make_tensor((8,), torch.float32), b=make_tensor((4,), torch.int64), c="x"
    )
    sd["a_view"] = sd["a"][2:]
    buf = _bytes(sd)
    out = serializer.load_keys(buf, ["a_view", "c"])
    assert list(out) == ["a_view", "c"]
    assert same_bits(out["a_view"], sd["a_view"])
    assert buf.read() == b""
    with pytest.raises(serializer.MismatchError, match="nope"):
        serializer.load_keys(_bytes(sd), ["nope"])


def test_read_index_lists_tensors_and_consumes_stream() -> None:
    sd = {
        "w": torch.zeros(3, 4, dtype=torch.bfloat16),
        "p": torch.nn.Parameter(torch.ones(2)),
        "n": 3,
    }
    for seekable in (True, False):
        buf = _bytes(sd)
        buf.seek(0, io.SEEK_END)
        buf.write(b"tail")
        buf.seek(0)
        f = buf if seekable else io.BufferedReader(_NoSeek(buf))
        index = serializer.read_index(f)
        assert index.keys() == ["w", "p"]
        assert index["w"].dtype == torch.bfloat16 and index["w"].shape == (3, 4)
        assert index["w"].nbytes == 24 and index["p"].parameter
        assert index.version == serializer.FORMAT_VERSION
        assert f.read() == b"tail"


class _NoSeek(io.RawIOBase):
    def __init__(self, f: io.BytesIO) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._f.readinto(b)


def test_load_into_in_place_without_copies() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    source = {k: v.clone().uniform_() for k, v in model.state_dict().items()}
    dest = model.state_dict()
    ptrs = {k: v.data_ptr() for k, v in dest.items()}
    result = serializer.load_into(dest, _bytes(source))
    assert result == serializer.LoadResult([], [])
    for k, v in model.state_dict().items():
        assert v.data_ptr() == ptrs[k]
        assert torch.equal(v, source[k])


def test_load_into_views_and_shared_storage() -> None:
    base = make_tensor((6, 8), torch.float32)
    source = {"base": base, "row": base[2], "block": base[1:4, 2:6], "t": base.t()}
    dest = {k: torch.zeros_like(v) for k, v in source.items()}
    serializer.load_into(dest, _bytes(source))
    for k in source:
        assert same_bits(dest[k], source[k]), k


def test_load_into_lazy_conjugate_and_negative_views() -> None:
    """Their memory holds other values than they read as: the bytes must not go straight in."""
    values = torch.tensor([1 + 2j, 3 - 1j, -0.5j], dtype=torch.complex64)
    views = {
        "conj": lambda c: c.conj(),
        "neg": lambda c: c.conj().imag,  # a real view with the negative bit
    }
    for name, make in views.items():
        dest = make(torch.zeros(3, dtype=torch.complex64))
        assert dest.is_conj() or dest.is_neg()
        want = values if dest.is_complex() else values.imag.clone()
        serializer.load_into({"v": dest}, _bytes({"v": want}))
        assert torch.equal(dest, want), name
        dest.zero_()
        twin = torch.zeros_like(want)
        serializer.load_into({"v": dest, "twin": twin}, _bytes({"v": want, "twin": want.view(3)}))
        assert torch.equal(dest, want) and torch.equal(twin, want), f"{name}, shared storage"


def test_load_into_checks_keys_shapes_dtypes() -> None:
    buf = _bytes({"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(serializer.MismatchError, match="missing.*'c'.*'b'"):
        serializer.load_into({"a": torch.zeros(2), "c": torch.zeros(1)}, buf)
    with pytest.raises(serializer.MismatchError, match="'a'.*float32 \\[2\\].*float64 \\[2\\]"):
        serializer.load_into(
            {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(3)},
            _bytes({"a": torch.ones(2), "b": torch.ones(3)}),
        )
    with pytest.raises(serializer.MismatchError, match="\\[3\\].*\\[4\\]"):
        serializer.load_into(
            {"a": torch.zeros(2), "b": torch.zeros(4)},
            _bytes({"a": torch.ones(2), "b": torch.ones(3)}),
        )
    dest = {"a": torch.zeros(2)}
    result = serializer.load_into(
        dest, _bytes({"a": torch.ones(2), "b": torch.ones(3)}), strict=False
    )
    assert result.unexpected_keys == ["b"] and torch.equal(dest["a"], torch.ones(2))


def test_non_blocking_sockets() -> None:
    import socket
    import threading

    obj = {"t": make_tensor((1 << 20,), torch.float32), "s": "x"}
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        errors = []

        def send() -> None:
            try:
                serializer.save(obj, a)
            except BaseException as e:
                errors.append(e)
            finally:
                a.shutdown(socket.SHUT_WR)  # the reader sees the end instead of waiting

        thread = threading.Thread(target=send)
        thread.start()
        loaded = serializer.load(b)
        thread.join()
    assert not errors
    assert_same(loaded, obj)


@pytest.mark.parametrize("hash_thread", [True, False], ids=["hash-thread", "hash-inline"])
@pytest.mark.parametrize("tail", [0, 5, (1 << 20) - 1, 1 << 20, (1 << 20) + 3])
def test_records_over_one_piece_with_any_tail(
    tail: int, hash_thread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records longer than one 8 MiB read piece, whose last piece is small or large: the
    pieces must be hashed in order whatever thread hashes them."""
    monkeypatch.setattr(_records, "HASH_THREAD", hash_thread)
    t = make_tensor(((8 << 20) + tail,), torch.uint8, seed=tail)
    for _ in range(5):
        assert same_bits(serializer.load(_bytes({"t": t}))["t"], t)
