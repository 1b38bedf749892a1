"""load and load_keys: what a loaded object is made of, and loading some keys only."""

from __future__ import annotations

import collections
import io
import socket
import threading

import pytest
import torch

import serializer
from testing.cases import make_tensor, same_bits
from testing.transports import CountingFile


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return buf


def test_loaded_tensors_are_writable_and_own_memory() -> None:
    out = serializer.load(_bytes({"t": torch.zeros(4)}))
    out["t"] += 1  # no read-only warning, no aliasing of a bytes object
    assert out["t"].tolist() == [1.0] * 4


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


def test_a_clean_close_between_streams_is_end_of_stream() -> None:
    """A source that ends where a stream could begin raised TruncatedError, as a cut did."""
    buf = io.BytesIO()
    for step in range(3):
        serializer.save({"step": step, "w": torch.full((2,), float(step))}, buf)
    data = buf.getvalue()
    got = list(serializer.iter_load(io.BytesIO(data)))
    assert [g["step"] for g in got] == [0, 1, 2]
    assert torch.equal(got[2]["w"], torch.full((2,), 2.0))
    with pytest.raises(serializer.EndOfStream) as info:
        serializer.load(io.BytesIO(b""))
    assert isinstance(info.value, EOFError) and not isinstance(info.value, serializer.FormatError)
    with pytest.raises(serializer.TruncatedError):  # a cut inside the last stream is not clean
        list(serializer.iter_load(io.BytesIO(data[:-5])))


def test_iter_load_over_a_socket_ends_when_the_sender_closes() -> None:
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(
            target=lambda: (
                [serializer.save({"i": i}, a) for i in range(4)],
                a.shutdown(socket.SHUT_WR),
            )
        )
        sender.start()
        assert [obj["i"] for obj in serializer.iter_load(b)] == [0, 1, 2, 3]
        sender.join(10)


def test_load_keys_takes_the_dotted_keys_read_index_lists() -> None:
    obj = {
        "model": {"a": torch.ones(2), "layers": [torch.zeros(1), {"w": torch.arange(3)}]},
        "b": torch.ones(1),
    }
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    keys = serializer.read_index(buf).keys()
    assert keys == ["model.a", "model.layers.0", "model.layers.1.w", "b"]
    buf.seek(0)
    got = serializer.load_keys(buf, ["model.layers.1.w", "model.a"])
    assert torch.equal(got["model.layers.1.w"], torch.arange(3))
    assert torch.equal(got["model.a"], torch.ones(2))
    buf.seek(0)
    with pytest.raises(serializer.MismatchError, match="model.nope"):
        serializer.load_keys(buf, ["model.nope"])


def test_load_keys_reads_only_the_records_it_needs_where_it_can_seek() -> None:
    """load_keys of one 12-byte tensor read every byte of a 105 MB file before."""
    big = {f"big{i}": torch.zeros(1 << 20) for i in range(16)}  # 64 MiB
    buf = io.BytesIO()
    serializer.save({**big, "small": torch.arange(3, dtype=torch.float32)}, buf)
    data = buf.getvalue()
    f = CountingFile(data)
    got = serializer.load_keys(f, ["small"])
    assert torch.equal(got["small"], torch.arange(3, dtype=torch.float32))
    assert f.read_bytes < (1 << 20), f.read_bytes  # the header, one record, the trailer
    dest = {"small": torch.zeros(3)}
    f = CountingFile(data)
    serializer.load_into(dest, f, strict=False)
    assert torch.equal(dest["small"], torch.arange(3.0)) and f.read_bytes < (1 << 20)


def test_tensors_in_a_set_have_one_key_each_everywhere() -> None:
    # A set's members have no position; they are numbered in stream order, the same in
    # read_index, load_keys and open (the outline's TensorRefs hash by value, the loaded
    # tensors by identity, so iteration orders differ: load_keys returned other tensors).
    obj = {
        "s": {torch.full((1,), float(i)) for i in range(16)},
        "f": frozenset({(torch.full((1,), 100.0 + i), i) for i in range(4)}),
    }
    data = io.BytesIO()
    serializer.save(obj, data)
    index = serializer.read_index(io.BytesIO(data.getvalue()))
    keys = [entry.key for entry in index.tensors]
    assert len(keys) == 20
    chosen = serializer.load_keys(io.BytesIO(data.getvalue()), keys)
    with serializer.open(io.BytesIO(data.getvalue())) as f:
        opened = {key: f.get_tensor(key) for key in keys}
    for entry in index.tensors:  # the storage the index names holds the value it gives
        assert chosen[entry.key].item() == opened[entry.key].item(), entry.key
    assert sorted(t.item() for t in chosen.values()) == [*range(16), *range(100, 104)]


def test_a_tensor_as_a_dict_key_names_its_value_alike_everywhere() -> None:
    obj = {"d": {torch.zeros(1): torch.ones(2), (torch.zeros(1),): [torch.ones(3)]}}
    data = io.BytesIO()
    serializer.save(obj, data)
    keys = [e.key for e in serializer.read_index(io.BytesIO(data.getvalue())).tensors]
    assert keys == ["d.<tensor>", "d.(<tensor>,).0"]
    chosen = serializer.load_keys(io.BytesIO(data.getvalue()), keys)
    assert chosen["d.<tensor>"].equal(torch.ones(2))
    assert chosen["d.(<tensor>,).0"].equal(torch.ones(3))
