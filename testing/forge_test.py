"""testing/forge.py, the spec's second writer, against the real one.

What forge builds from docs/FORMAT.md must be byte for byte what `serializer.save` writes,
and `serializer.load` must load it: then the two implementations agree on the layout, and
the forgeries other tests build are streams the reader takes for real ones.
"""

from __future__ import annotations

import ctypes
import io
import pickle
import struct
from typing import Any

import pytest
import torch

import serializer
from testing import forge
from testing.cases import FORMAT_DTYPES, Case, assert_same, available_dtypes, make_tensor

F32 = forge.dtype_id(torch.float32)
Ref = forge.Ref


def _saved(obj: Any, protocol: int = serializer.DEFAULT_PROTOCOL) -> bytes:
    buf = io.BytesIO()
    serializer.save(obj, buf, pickle_protocol=protocol)
    return buf.getvalue()


def _load(data: bytes, weights_only: bool = True) -> Any:
    buf = io.BytesIO(data)
    out = serializer.load(buf, weights_only=weights_only)
    assert buf.tell() == len(data), "load must consume exactly the stream"
    return out


def _payload(t: torch.Tensor) -> bytes:
    """The bytes of the whole storage under `t`, as they lie in memory."""
    storage = t.untyped_storage()
    nbytes = storage.nbytes()
    return ctypes.string_at(storage.data_ptr(), nbytes) if nbytes else b""


def _stream(storages: list[tuple[bytes, bytes]], tensors: list[bytes], skeleton: bytes) -> bytes:
    """A forged stream whose payloads are in this machine's byte order, as save's are."""
    return forge.stream(storages, tensors, skeleton, flags=forge.NATIVE_FLAGS)


def _check(obj: Any, forged: bytes, protocol: int = serializer.DEFAULT_PROTOCOL) -> Any:
    """forged is what save writes for obj, and loads as obj."""
    saved = _saved(obj, protocol)
    assert forged == saved, _first_difference(forged, saved)
    loaded = _load(forged)
    assert_same(loaded, obj)
    return loaded


def _first_difference(forged: bytes, saved: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(forged, saved, strict=False)) if a != b), None)
    if at is None:
        return f"forged {len(forged)} bytes, saved {len(saved)}; one is a prefix of the other"
    forged_bytes, saved_bytes = forged[at : at + 16], saved[at : at + 16]
    return f"first difference at byte {at}: forged {forged_bytes!r}, saved {saved_bytes!r}"


# ---------------------------------------------------------------------------- by hand


def test_empty_dict() -> None:
    _check({}, _stream([], [], forge.skeleton({})))
    assert len(_saved({})) == forge.PREAMBLE_SIZE + len(pickle.dumps({}, 2)) + 8 + 32


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_views_of_one_storage(protocol: int) -> None:
    base = make_tensor((3, 4), torch.float32, seed=1)
    obj = {
        "w": base,
        "row": base[1],
        "col": base[:, 2],
        "t": base.t(),
        "block": base[1:, 1:3],
    }
    forged = _stream(
        [(forge.storage_entry(48, F32), _payload(base))],
        [
            forge.tensor_entry(0, F32, shape=(3, 4), stride=(4, 1)),
            forge.tensor_entry(0, F32, offset=4, shape=(4,), stride=(1,)),
            forge.tensor_entry(0, F32, offset=2, shape=(3,), stride=(4,)),
            forge.tensor_entry(0, F32, shape=(4, 3), stride=(1, 4)),
            forge.tensor_entry(0, F32, offset=5, shape=(2, 2), stride=(4, 1)),
        ],
        forge.skeleton(
            {"w": Ref(0), "row": Ref(1), "col": Ref(2), "t": Ref(3), "block": Ref(4)},
            protocol=protocol,
        ),
    )
    _check(obj, forged, protocol)


def test_parameters_and_requires_grad() -> None:
    w = torch.nn.Parameter(make_tensor((2, 3), torch.float32, seed=2))
    frozen = torch.nn.Parameter(make_tensor((3,), torch.float32, seed=3), requires_grad=False)
    grad = make_tensor((2,), torch.float32, seed=4).requires_grad_()
    plain = make_tensor((1,), torch.float32, seed=5)
    obj = {"w": w, "frozen": frozen, "grad": grad, "plain": plain}
    grad_flag = forge.FLAG_REQUIRES_GRAD
    forged = _stream(
        [
            (forge.storage_entry(24, F32), _payload(w)),
            (forge.storage_entry(12, F32), _payload(frozen)),
            (forge.storage_entry(8, F32), _payload(grad)),
            (forge.storage_entry(4, F32), _payload(plain)),
        ],
        [
            forge.tensor_entry(
                0, F32, forge.KIND_PARAMETER, grad_flag, shape=(2, 3), stride=(3, 1)
            ),
            forge.tensor_entry(1, F32, forge.KIND_PARAMETER, 0, shape=(3,), stride=(1,)),
            forge.tensor_entry(2, F32, forge.KIND_TENSOR, grad_flag, shape=(2,), stride=(1,)),
            forge.tensor_entry(3, F32, forge.KIND_TENSOR, 0, shape=(1,), stride=(1,)),
        ],
        forge.skeleton({"w": Ref(0), "frozen": Ref(1), "grad": Ref(2), "plain": Ref(3)}),
    )
    loaded = _check(obj, forged)
    assert type(loaded["w"]) is torch.nn.Parameter and loaded["w"].requires_grad
    assert type(loaded["frozen"]) is torch.nn.Parameter and not loaded["frozen"].requires_grad
    assert type(loaded["grad"]) is torch.Tensor and loaded["grad"].requires_grad


def test_several_dtypes_and_a_scalar() -> None:
    shapes = {
        torch.int64: (2,),
        torch.float16: (3,),
        torch.bfloat16: (2, 2),
        torch.bool: (5,),
        torch.complex64: (2,),
        torch.uint8: (7,),
        torch.float64: (),  # a scalar: ndim 0, no sizes or strides
    }
    obj = {str(d): make_tensor(shape, d, seed=i) for i, (d, shape) in enumerate(shapes.items())}
    storages, tensors = [], []
    for i, t in enumerate(obj.values()):
        dtype = forge.dtype_id(t.dtype)
        storages.append((forge.storage_entry(t.numel() * t.element_size(), dtype), _payload(t)))
        tensors.append(forge.tensor_entry(i, dtype, shape=t.shape, stride=t.stride()))
    forged = _stream(storages, tensors, forge.skeleton({k: Ref(i) for i, k in enumerate(obj)}))
    _check(obj, forged)
    assert forge.tensor_entry(6, 10, shape=(), stride=()) == tensors[6]
    assert len(tensors[6]) == forge.TENSOR_ENTRY_SIZE


def test_same_tensor_twice_and_a_zero_size_storage() -> None:
    t = make_tensor((4,), torch.int64, seed=6)
    obj = {"a": t, "b": t, "empty": torch.zeros(0, 3)}
    i64 = forge.dtype_id("int64")
    forged = _stream(
        [(forge.storage_entry(32, i64), _payload(t)), (forge.storage_entry(0, F32), b"")],
        [
            forge.tensor_entry(0, i64, shape=(4,), stride=(1,)),
            forge.tensor_entry(1, F32, shape=(0, 3), stride=(3, 1)),
        ],
        forge.skeleton({"a": Ref(0), "b": Ref(0), "empty": Ref(1)}),
    )
    loaded = _check(obj, forged)
    assert loaded["a"] is loaded["b"]
    # The empty record is its checksum alone: the checksum of nothing.
    assert forge.record(b"") == struct.pack("<Q", forge.EMPTY_CHECKSUM)
    assert forge.parse(forged).storages[1] == (forge.storage_entry(0, F32), b"")


def test_python_values_and_a_call() -> None:
    obj = {"size": torch.Size([2, 3]), "dtype": torch.float16, "n": [1, 2.5, None, "ü"]}
    skeleton = forge.skeleton(
        {"size": forge.Call(torch.Size, (2, 3)), "dtype": torch.float16, "n": [1, 2.5, None, "ü"]}
    )
    _check(obj, _stream([], [], skeleton))


def test_two_entries_naming_one_storage_load_as_two_views() -> None:
    """The other valid form of a tensor met twice (the first releases wrote it)."""
    t = make_tensor((4,), torch.float32, seed=7)
    entry = forge.tensor_entry(0, F32, shape=(4,), stride=(1,))
    forged = _stream(
        [(forge.storage_entry(16, F32), _payload(t))],
        [entry, entry, forge.tensor_entry(0, F32, offset=1, shape=(2,), stride=(1,))],
        forge.skeleton({"a": Ref(0), "b": Ref(1), "c": Ref(2), "a_again": Ref(0)}),
    )
    out = _load(forged)
    assert out["a"] is out["a_again"] and out["a"] is not out["b"]
    pointers = {out[k].untyped_storage().data_ptr() for k in ("a", "b", "c")}
    assert len(pointers) == 1
    assert_same(out, {"a": t, "b": t, "c": t[1:3], "a_again": t})


# ---------------------------------------------------------------------------- the catalog


def _forge_like_save(obj: Any, protocol: int = serializer.DEFAULT_PROTOCOL) -> bytes:
    """What docs/FORMAT.md says a writer writes for `obj`: each tensor object gets one entry,
    in the order pickle meets it; each storage one record, in the order its first tensor is
    met; conjugate and negative views are resolved."""
    storages: list[tuple[bytes, bytes]] = []
    tensors: list[bytes] = []
    storage_index: dict[int, int] = {}  # a StorageImpl's address -> its storage index
    entry_index: dict[int, int] = {}  # id(tensor) -> its tensor table entry
    alive: list[torch.Tensor] = []  # so that no address above is reused meanwhile

    def ref(o: Any) -> int | None:
        if not isinstance(o, torch.Tensor):
            return None
        if id(o) in entry_index:
            return entry_index[id(o)]
        t = o.detach()
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        alive.extend((o, t))
        dtype = forge.dtype_id(t.dtype)
        storage = t.untyped_storage()
        if storage._cdata not in storage_index:
            storage_index[storage._cdata] = len(storages)
            device = forge.DEVICE_TYPE_IDS[t.device.type]
            index = -1 if t.device.index is None else t.device.index
            entry = forge.storage_entry(storage.nbytes(), dtype, device, index)
            storages.append((entry, _payload(t)))
        kind = forge.KIND_PARAMETER if type(o) is torch.nn.Parameter else forge.KIND_TENSOR
        flags = forge.FLAG_REQUIRES_GRAD if o.requires_grad else 0
        tensors.append(
            forge.tensor_entry(
                storage_index[storage._cdata],
                dtype,
                kind,
                flags,
                t.storage_offset(),
                t.shape,
                t.stride(),
            )
        )
        entry_index[id(o)] = len(tensors) - 1
        return entry_index[id(o)]

    skeleton = forge.skeleton(obj, protocol=protocol, ref=ref)
    return _stream(storages, tensors, skeleton)


def test_forge_writes_what_save_writes_for_every_case(case: Case) -> None:
    obj = case.build("cpu")
    forged = _forge_like_save(obj)
    saved = _saved(obj)
    assert forged == saved, _first_difference(forged, saved)
    assert_same(_load(forged, case.weights_only), obj)
    # parse takes it apart into what stream builds it from.
    parts = forge.parse(saved)
    assert parts.stream() == saved
    assert parts.trailer_offset == len(saved) - forge.TRAILER_SIZE


# ---------------------------------------------------------------------------- tools


class _RefUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return Ref(pid)


def _unpickle_refs(skeleton: bytes) -> Any:
    """A skeleton unpickled with every persistent id as a Ref: what forge.skeleton took."""
    return _RefUnpickler(io.BytesIO(skeleton)).load()


def _small() -> tuple[dict[str, torch.Tensor], bytes]:
    obj = {
        "w": make_tensor((2, 3), torch.float32, seed=8),
        "e": torch.zeros(0),
        "b": make_tensor((3,), torch.int16, seed=9),
    }
    return obj, _saved(obj)


def test_parse_finds_every_piece() -> None:
    obj, data = _small()
    parts = forge.parse(data)
    pre = parts.preamble
    assert pre == forge.Preamble(3, 3, pre.tensor_table_len, len(parts.skeleton), 1, 0, 0)
    assert (pre.major, pre.minor) == serializer.FORMAT_VERSION
    assert pre.tensor_table_len == sum(len(t) for t in parts.tensors) == (20 + 32) + 2 * (20 + 16)
    assert parts.storage_table_offset == forge.PREAMBLE_SIZE
    assert parts.tensor_table_offset == forge.PREAMBLE_SIZE + 3 * forge.STORAGE_ENTRY_SIZE
    assert parts.skeleton_offset == parts.tensor_table_offset + pre.tensor_table_len
    assert parts.header_checksum_offset == parts.skeleton_offset + pre.skeleton_len
    assert data[parts.skeleton_offset : parts.header_checksum_offset] == parts.skeleton
    assert parts.record_offsets == (
        parts.records_offset,
        parts.records_offset + 24 + 8,
        parts.records_offset + 24 + 8 + 0 + 8,
    )
    for (_, payload), at in zip(parts.storages, parts.record_offsets, strict=True):
        assert data[at : at + len(payload)] == payload
    assert data[parts.trailer_offset :][:8] == forge.END_MAGIC
    assert parts.storage_fields == [
        forge.StorageFields(24, F32),
        forge.StorageFields(0, F32),
        forge.StorageFields(6, forge.dtype_id("int16")),
    ]
    assert parts.tensor_fields[0] == forge.TensorFields(0, F32, 0, 0, 0, (2, 3), (3, 1))
    assert _unpickle_refs(parts.skeleton) == {"w": Ref(0), "e": Ref(1), "b": Ref(2)}
    assert (
        forge.unpack_storage_entry(forge.storage_entry(*parts.storage_fields[2]))
        == (parts.storage_fields[2])
    )
    fields, end = forge.unpack_tensor_entry(parts.tensors[0])
    assert end == len(parts.tensors[0]) and forge.tensor_entry(*fields) == parts.tensors[0]


def test_parse_verifies_every_byte() -> None:
    _, data = _small()
    for at in range(len(data)):
        bad = bytearray(data)
        bad[at] ^= 0x04
        with pytest.raises(forge.ParseError):
            forge.parse(bad)
    with pytest.raises(forge.ParseError, match="trailer"):
        forge.parse(data + b"x")
    with pytest.raises(forge.ParseError):
        forge.parse(data[:-1])


def test_reseal_makes_an_edited_stream_valid_again() -> None:
    obj, data = _small()
    copy = bytearray(data)
    forge.reseal(copy)
    assert copy == data  # nothing to do on a valid stream
    parts = forge.parse(data)
    # Edit a payload byte: the record's checksum no longer matches.
    edited = bytearray(data)
    edited[parts.record_offsets[0]] ^= 0xFF
    with pytest.raises(serializer.ChecksumError):
        _load(bytes(edited))
    forge.reseal(edited)
    loaded = _load(bytes(edited))
    assert loaded["w"].view(torch.uint8)[0, 0] == obj["w"].view(torch.uint8)[0, 0] ^ 0xFF
    # Edit the header (storage 2's device index): the header checksum no longer matches.
    edited = bytearray(data)
    struct.pack_into("<i", edited, forge.PREAMBLE_SIZE + 2 * 16 + 12, 0)
    with pytest.raises(serializer.ChecksumError):
        _load(bytes(edited))
    forge.reseal(edited)
    assert serializer.read_index(io.BytesIO(bytes(edited))).storages[2].location == "cpu:0"
    # Edit the preamble and the trailer's checksum.
    edited = bytearray(data)
    edited[10] = 5  # minor version
    edited[-1] ^= 1
    forge.reseal(edited)
    assert serializer.read_index(io.BytesIO(bytes(edited))).version == (1, 5)
    with pytest.raises(forge.ParseError):
        forge.reseal(bytearray(data[:-1]))


def test_patch_preamble() -> None:
    obj, data = _small()
    patched = forge.patch_preamble(data, minor=9)
    assert len(patched) == len(data)
    assert patched[forge.PREAMBLE_SIZE :] == data[forge.PREAMBLE_SIZE :]
    assert forge.unpack_preamble(patched) == forge.unpack_preamble(data)._replace(minor=9)
    assert forge.parse(patched).preamble.minor == 9  # every checksum holds
    index = serializer.read_index(io.BytesIO(patched))
    assert index.version == (1, 9)
    assert_same(_load(patched), obj)
    with pytest.raises(serializer.VersionError):
        _load(forge.patch_preamble(data, major=2))
    with pytest.raises(serializer.FormatError, match="flags"):
        _load(forge.patch_preamble(data, flags=0x10))


def test_constants_are_the_specs() -> None:
    assert forge.PREAMBLE_SIZE == 48
    assert forge.STORAGE_ENTRY_SIZE == 16
    assert forge.TENSOR_ENTRY_SIZE == 20
    assert forge.TRAILER_SIZE == 32
    assert forge.checksum(b"") == forge.EMPTY_CHECKSUM == 0x2D06800538D394C2
    assert forge.preamble(0, 0, 0, 0)[:8] == b"\x89SRLZ\r\n\x1a"
    assert forge.trailer(0, 0)[:8] == b"\x1aSRLZEND"
    written = forge.unpack_preamble(forge.preamble(0, 0, 0, 0))
    assert (written.major, written.minor) == serializer.FORMAT_VERSION
    with pytest.raises(ValueError):
        forge.Ref(None)


def test_dtype_table_is_the_writers() -> None:
    """forge's dtype ids are the spec's: the ids save writes, in the order of the catalog's
    list of the format's dtypes, with torch's element sizes."""
    assert sorted(forge.DTYPE_TABLE) == list(range(1, len(FORMAT_DTYPES) + 1))
    assert [forge.DTYPE_TABLE[i][0] for i in sorted(forge.DTYPE_TABLE)] == list(FORMAT_DTYPES)
    for dtype in available_dtypes():
        index = serializer.read_index(io.BytesIO(_saved({"t": make_tensor((2,), dtype)})))
        assert index.storages[0].dtype_id == forge.dtype_id(dtype), dtype
        size = forge.DTYPE_TABLE[forge.dtype_id(dtype)][1]
        assert size == torch.empty(0, dtype=dtype).element_size(), dtype
    with pytest.raises(KeyError):
        forge.dtype_id(torch.qint8)
