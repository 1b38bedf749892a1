"""Reproducers of hostile-input findings (docs/SECURITY.md) outside the skeleton's opcodes
(pickle_check_test.py) and the allowlist (parity_test.py): crashes, blow-ups and errors that
were not the library's, each asserted on a real stream."""

from __future__ import annotations

import gc
import io
import os
import threading
import warnings

import pytest
import torch

import serializer
from testing import forge

F32 = forge.dtype_id("float32")


def _roundtrip(obj: object) -> object:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    return serializer.load(buf)


def test_efficient_zero_tensor_saves_as_zeros() -> None:
    """It has no memory (a null data pointer): save read address 0 and crashed."""
    z = torch._efficientzerotensor((4, 5))
    loaded = _roundtrip({"z": z})
    assert torch.equal(loaded["z"], torch.zeros(4, 5))


def test_empty_storage_viewed_as_two_element_sizes() -> None:
    """Refused before ("viewed as both float32 and int8"), though an empty storage holds no
    bytes that two dtypes could disagree on."""
    a = torch.tensor([])
    loaded = _roundtrip([a, a.view(torch.int8)])
    assert loaded[0].dtype == torch.float32 and loaded[1].dtype == torch.int8
    assert loaded[0].numel() == loaded[1].numel() == 0


def test_tensors_inside_sets_are_selected_and_listed() -> None:
    t = torch.arange(3.0)
    buf = io.BytesIO()
    serializer.save({"s": frozenset({t}), "other": torch.ones(2)}, buf)
    buf.seek(0)
    (got,) = serializer.load_keys(buf, ["s"])["s"]
    assert not got.is_meta and torch.equal(got, t)  # a meta stand-in before
    buf.seek(0)
    assert serializer.read_index(buf).keys() == ["s.0", "other"]  # omitted before


def test_a_storage_no_allocator_can_give_is_a_format_error() -> None:
    """The header claims 2**50 bytes that never arrive: torch's allocator error before."""
    data = forge.stream(
        [(forge.storage_entry(1 << 50, F32), b"")],
        [forge.tensor_entry(storage=0, dtype_id=F32)],
        forge.skeleton({"t": forge.Ref(0)}),
    )
    with pytest.raises(serializer.FormatError, match="cannot be allocated"):
        serializer.load(io.BytesIO(data))


def test_storages_past_2_62_bytes_are_refused_by_read_index() -> None:
    """read_index seeks over the records: an OverflowError from seek before."""
    entries = [(forge.storage_entry(1 << 61, F32), b"") for _ in range(2)]
    data = forge.stream(entries, [], forge.skeleton({}))
    with pytest.raises(serializer.FormatError, match="2\\^62"):
        serializer.read_index(io.BytesIO(data))


def test_load_into_a_zero_size_view_with_huge_strides_is_a_format_error() -> None:
    """`set_` raised its own TypeError/RuntimeError before (load wraps the same)."""
    entries = [(forge.storage_entry(8, F32), bytes(8))]
    tensors = [
        forge.tensor_entry(storage=0, dtype_id=F32, shape=(2,), stride=(1,)),
        forge.tensor_entry(storage=0, dtype_id=F32, shape=(0, 3), stride=(1 << 63, 1 << 63)),
    ]
    data = forge.stream(entries, tensors, forge.skeleton({"a": forge.Ref(0), "b": forge.Ref(1)}))
    dest = {"a": torch.zeros(2), "b": torch.zeros(0, 3)}
    with pytest.raises(serializer.FormatError):
        serializer.load_into(dest, io.BytesIO(data))
    with pytest.raises(serializer.FormatError):
        serializer.load(io.BytesIO(data))


def test_bytes_of_a_tensor_is_refused() -> None:
    """``bytes(<0-dim int tensor>)`` passed the old "no int size" rule: a 2 GiB object."""
    data = forge.stream(
        [(forge.storage_entry(8, forge.dtype_id("int64")), (1 << 31).to_bytes(8, "little"))],
        [forge.tensor_entry(storage=0, dtype_id=forge.dtype_id("int64"), shape=(), stride=())],
        forge.skeleton({"b": forge.Call(bytes, forge.Ref(0))}),
    )
    with pytest.raises(serializer.FormatError, match="bytes\\(\\) with arguments"):
        serializer.load(io.BytesIO(data))


def _torch_stream(obj: object) -> io.BytesIO:
    from torch.distributed import _serialization

    buf = io.BytesIO()
    _serialization._streaming_save(obj, buf)
    buf.seek(0)
    return buf


def _has_torch_streams() -> bool:
    try:
        from torch.distributed import _serialization  # noqa: F401
    except ImportError:
        return False
    return True


class _Grow:
    """Pickles, inside torch's own pickler, as the tensor rebuilt past its storage's end."""

    def __init__(self, storage: torch.Tensor, numel: int) -> None:
        self.storage, self.numel = storage, numel

    def __reduce__(self) -> object:
        from collections import OrderedDict

        rebuild = torch._utils._rebuild_tensor_v2
        return (
            rebuild,
            (self.storage.untyped_storage(), 0, (self.numel,), (1,), False, OrderedDict()),
        )


@pytest.mark.skipif(not _has_torch_streams(), reason="torch < 2.7 has no _streaming_save")
@pytest.mark.parametrize("nbytes", [0, 8], ids=["empty", "eight-bytes"])
def test_torch_stream_tensor_past_its_storage_is_refused(nbytes: int) -> None:
    """torch's reader grew the storage into uninitialized memory (a 0-byte storage read as
    4096 bytes)."""
    base = torch.zeros(nbytes, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = _torch_stream({"t": _Grow(base, 4096)})
    with pytest.raises(serializer.FormatError):
        serializer.load(buf)


def _blocked_load(data: bytes, while_blocked: object) -> object:
    """Load `data` through a pipe in a thread; call `while_blocked()` while the load waits
    for the rest of the stream."""
    read_fd, write_fd = os.pipe()
    result: list[object] = []
    with os.fdopen(read_fd, "rb", buffering=0) as reader:
        loader = threading.Thread(target=lambda: result.append(serializer.load(reader)))
        loader.start()
        with os.fdopen(write_fd, "wb", buffering=0) as writer:
            writer.write(data[:100])  # the preamble and part of the header: load now waits
            threading.Event().wait(0.2)
            while_blocked()  # type: ignore[operator]
            writer.write(data[100:])
        loader.join(30)
    return result[0]


def _stream(obj: object) -> bytes:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    return buf.getvalue()


def test_gc_runs_while_a_load_waits_for_data() -> None:
    """save/load held the GC off for their whole run, including while blocked on a socket."""
    before = gc.get_threshold()
    seen: list[object] = []
    loaded = _blocked_load(
        _stream({"t": torch.ones(3)}), lambda: seen.append((gc.isenabled(), gc.get_threshold()))
    )
    assert seen == [(True, before)]
    assert torch.equal(loaded["t"], torch.ones(3))  # type: ignore[index]


def test_the_application_disabling_gc_during_a_load_is_not_overridden() -> None:
    """save/load re-enabled the GC afterwards even if the application disabled it meanwhile."""
    before = gc.get_threshold()
    try:
        _blocked_load(_stream({"t": torch.ones(3)}), gc.disable)
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert gc.get_threshold() == before


def _flip_last_payload_byte_of(data: bytes, key: str) -> bytes:
    """`data` with the last payload byte of the storage of `key` flipped (checksums kept)."""
    index = serializer.read_index(io.BytesIO(data))
    storage = index[key].storage
    parts = forge.parse(data)
    end = parts.records_offset
    for i, entry in enumerate(index.storages):
        end += entry.nbytes
        if i == storage:
            break
        end += 8
    bad = bytearray(data)
    bad[end - 1] ^= 0x40
    return bytes(bad)


@pytest.mark.parametrize(
    "numel, atomic, kept",
    [(100, False, True), (1 << 19, True, True), (1 << 19, False, False)],
    ids=["small", "large-atomic", "large-direct"],
)
def test_what_a_failed_load_into_leaves(numel: int, atomic: bool, kept: bool) -> None:
    """A checksum failure left the corrupted payload in the destination: now small storages
    (and any with atomic=True) keep their old values, as load_into documents."""
    new = {k: torch.full((numel,), float(i + 1)) for i, k in enumerate("abc")}
    data = _flip_last_payload_byte_of(_stream(new), "b")
    dest = {k: torch.zeros(numel) for k in "abc"}
    with pytest.raises(serializer.ChecksumError) as info:
        serializer.load_into(dest, io.BytesIO(data), atomic=atomic)
    assert info.value.keys == ("b",)
    assert torch.equal(dest["a"], new["a"])  # before the failing storage: loaded
    assert torch.equal(dest["c"], torch.zeros(numel))  # after it: untouched
    assert torch.equal(dest["b"], torch.zeros(numel)) is kept
    dest = {k: torch.zeros(numel) for k in "abc"}
    cut = _stream(new)[: len(_stream(new)) - 8 - numel * 4 - 8 - 32 + 10]  # inside "c"
    with pytest.raises(serializer.TruncatedError):
        serializer.load_into(dest, io.BytesIO(cut), atomic=atomic)
    assert torch.equal(dest["b"], new["b"])
