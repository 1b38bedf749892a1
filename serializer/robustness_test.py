"""Bad input: truncation and bit flips at every offset, hostile skeletons and headers."""

from __future__ import annotations

import io
import os
import pickle
import random
import struct

import pytest
import torch
import xxhash

import serializer
from serializer import _format
from testing.cases import assert_same, make_tensor


def _small_stream() -> tuple[dict, bytes]:
    base = make_tensor((4, 3), torch.float32, seed=9)
    obj = {
        "w": base,
        "view": base[1:, ::2],
        "b": make_tensor((5,), torch.int16, seed=3),
        "s": "ü",
        "z": torch.zeros(0, 2),
    }
    buf = io.BytesIO()
    serializer.save(obj, buf)
    return obj, buf.getvalue()


def test_truncation_at_every_offset_raises() -> None:
    _, data = _small_stream()
    for cut in range(len(data)):
        with pytest.raises(serializer.TruncatedError) as info:
            serializer.load(io.BytesIO(data[:cut]))
        assert info.value.received < info.value.expected


def test_truncation_names_the_record_and_counts() -> None:
    _, data = _small_stream()
    index = serializer.read_index(io.BytesIO(data))
    cut = index.nbytes - _format.TRAILER_SIZE - 8 - 8 - 10  # start of b (storage 1); z follows
    with pytest.raises(
        serializer.TruncatedError,
        match=r"storage 1 \(10 bytes, used by 'b'\): expected 10 bytes, received 0",
    ):
        serializer.load(io.BytesIO(data[:cut]))


def test_bit_flip_at_every_offset_raises_or_loads_identically() -> None:
    obj, data = _small_stream()
    flipped_loads = 0
    for offset in range(len(data)):
        for bit in (0, 5):
            bad = bytearray(data)
            bad[offset] ^= 1 << bit
            try:
                loaded = serializer.load(io.BytesIO(bytes(bad)))
            except serializer.SerializerError:
                continue
            flipped_loads += 1
            assert_same(loaded, obj)
    # Every byte is covered by a checksum, so no flip may load at all.
    assert flipped_loads == 0


def test_checksum_error_names_the_storage() -> None:
    _, data = _small_stream()
    bad = bytearray(data)
    bad[-_format.TRAILER_SIZE - 8 - 1] ^= 0x10  # last payload byte of the last storage
    with pytest.raises(serializer.ChecksumError, match=r"storage \d .*used by 'b'"):
        serializer.load(io.BytesIO(bytes(bad)))


def test_garbage_and_unknown_magic() -> None:
    for junk in (b"", b"x", b"PK\x03\x04" + bytes(60), os.urandom(200), b"\x89SRLZ\r\n\x1a"):
        with pytest.raises(serializer.SerializerError):
            serializer.load(io.BytesIO(junk))


@pytest.mark.parametrize("weights_only", [True, False])
def test_garbage_that_looks_like_a_torch_stream(weights_only: bool) -> None:
    # Torch's own streams start with a pickle's PROTO opcode (0x80) and protocol, so garbage
    # that starts so goes to torch's reader (CI once drew such bytes from os.urandom and
    # torch raised "Unsupported operand 247"). Whatever it raises must come out as ours.
    rng = random.Random(0)
    junks = [b"\x80", b"\x80\xf7" + bytes(30), b"\x80\x02K\x05.", b"\x80\x02\xf7" + bytes(9)]
    junks += [b"\x80" + rng.randbytes(rng.randrange(1, 300)) for _ in range(100)]
    junks += [b"\x80\x02" + rng.randbytes(rng.randrange(0, 300)) for _ in range(300)]
    for junk in junks:
        with pytest.raises(serializer.SerializerError):
            serializer.load(io.BytesIO(junk), weights_only=weights_only)


def _forge(
    skeleton: bytes,
    table: list[tuple[int, int, int, int]] = (),
    payloads=(),
    tensors: list[bytes] = (),
) -> bytes:
    """A stream with valid checksums around arbitrary content: what an attacker can send."""
    packed = _format.pack_storage_table(list(table))
    tensor_table = b"".join(tensors)
    out = _format.pack_preamble(len(table), len(tensors), len(tensor_table), len(skeleton))
    out += packed + tensor_table + skeleton
    out += _format.pack_checksum(_format.header_checksum(packed, tensor_table, skeleton))
    for p in payloads:
        out += p + _format.pack_checksum(_format.checksum(p))
    return out + _format.pack_trailer(len(table), len(out))


class _System:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/serializer-pwned",))


def test_weights_only_never_runs_os_system(tmp_path) -> None:
    marker = "/tmp/serializer-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    buf = io.BytesIO()
    serializer.save({"x": _System()}, buf)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        serializer.load(io.BytesIO(buf.getvalue()))
    forged = _forge(pickle.dumps({"x": _System()}, protocol=2))
    with pytest.raises(serializer.UnsafeGlobalError):
        serializer.load(io.BytesIO(forged))
    assert not os.path.exists(marker)


def _entry(storage=0, dtype=9, kind=0, flags=0, offset=0, shape=(2,), stride=(1,), ndim=None):  # type: ignore[no-untyped-def]
    ndim = len(shape) if ndim is None else ndim
    head = struct.pack("<IHBBQI", storage, dtype, kind, flags, offset, ndim)
    return head + struct.pack(f"<{len(shape) + len(stride)}Q", *shape, *stride)


class _Ref:
    def __init__(self, pid):  # type: ignore[no-untyped-def]
        self.pid = pid


class _RefPickler(pickle.Pickler):
    def persistent_id(self, obj):  # type: ignore[no-untyped-def]
        return obj.pid if isinstance(obj, _Ref) else None


def _skeleton_with(pid) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    _RefPickler(buf, 2).dump({"t": _Ref(pid)})
    return buf.getvalue()


def test_well_formed_forgery_loads() -> None:
    """The forging helper itself makes valid streams (so the failures below are meaningful)."""
    stream = _forge(_skeleton_with(0), [(8, 9, 0, -1)], [bytes(range(8))], [_entry()])
    out = serializer.load(io.BytesIO(stream))
    assert out["t"].view(torch.uint8).tolist() == list(range(8))


@pytest.mark.parametrize(
    "pid,entry",
    [
        ("nope", _entry()),  # a persistent id that is not an index
        (1, _entry()),  # tensor index out of range
        (-1, _entry()),
        (0, _entry(storage=5)),  # storage out of range
        (0, _entry(shape=(100,))),  # past the storage's end
        (0, _entry(offset=1)),  # offset pushes past the end
        (0, _entry(dtype=6)),  # itemsize differs from the storage's
        (0, _entry(dtype=999)),  # unknown dtype
        (0, _entry(kind=7)),  # unknown kind
        (0, _entry(flags=0x40)),  # unknown flags
        (0, _entry(shape=(2, 1), stride=(1,), ndim=2)),  # entry shorter than its ndim says
        (0, _entry(ndim=100)),  # ndim over the limit
        (0, _entry() + b"xx"),  # bytes after the last entry
        (0, _entry(shape=(1 << 62,), stride=(1 << 62,))),  # overflowing extent
    ],
)
def test_hostile_tensor_entries(pid, entry) -> None:  # type: ignore[no-untyped-def]
    stream = _forge(_skeleton_with(pid), [(8, 9, 0, -1)], [bytes(8)], [entry])
    with pytest.raises(serializer.FormatError):
        serializer.load(io.BytesIO(stream))


def test_requires_grad_on_integers_is_a_format_error() -> None:
    stream = _forge(
        _skeleton_with(0), [(8, 6, 0, -1)], [bytes(8)], [_entry(dtype=6, flags=1, shape=(1,))]
    )
    with pytest.raises(serializer.FormatError):
        serializer.load(io.BytesIO(stream))


@pytest.mark.parametrize(
    "skeleton",
    [b"", b"\x80\x02", b"garbage", b"\x80\x02]q\x00(K\x01" * 3, pickle.dumps(1)[:-1] + b"X"],
)
def test_malformed_skeletons(skeleton: bytes) -> None:
    with pytest.raises(serializer.FormatError):
        serializer.load(io.BytesIO(_forge(skeleton)))


def test_hostile_header_limits() -> None:
    def preamble(major=1, count=0, skeleton_len=0, flags=0, tensors=0, tensor_len=0) -> bytes:  # type: ignore[no-untyped-def]
        head = struct.pack(
            "<8sHHIIIQQ", _format.MAGIC, major, 0, flags, count, tensors, tensor_len, skeleton_len
        )
        return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))

    with pytest.raises(serializer.FormatError, match="storage count"):
        serializer.load(io.BytesIO(preamble(count=1 << 30)))
    with pytest.raises(serializer.FormatError, match="tensor count"):
        serializer.load(io.BytesIO(preamble(tensors=1 << 30, tensor_len=20 << 30)))
    with pytest.raises(serializer.FormatError, match="tensor table length"):
        serializer.load(io.BytesIO(preamble(tensors=1, tensor_len=3)))
    with pytest.raises(serializer.FormatError, match="skeleton length"):
        serializer.load(io.BytesIO(preamble(skeleton_len=1 << 40)))
    with pytest.raises(serializer.FormatError, match="flags"):
        serializer.load(io.BytesIO(preamble(flags=0x80)))
    with pytest.raises(serializer.VersionError, match="format version 2.0"):
        serializer.load(io.BytesIO(preamble(major=2)))
    # A huge claimed skeleton with few bytes behind it is a truncation, not a huge allocation.
    with pytest.raises(serializer.TruncatedError):
        serializer.load(io.BytesIO(preamble(skeleton_len=1 << 30) + b"x" * 100))


def test_newer_minor_version_loads() -> None:
    data = bytearray(_small_stream()[1])
    struct.pack_into("<H", data, 10, _format.MINOR + 3)
    struct.pack_into("<Q", data, 40, xxhash.xxh3_64_intdigest(bytes(data[:40])))
    serializer.load(io.BytesIO(bytes(data)))


def test_hostile_table_entries() -> None:
    for entry in [(8, 999, 0, -1), (8, 9, 77, -1), (7, 9, 0, -1), (8, 9, 0, -5)]:
        with pytest.raises(serializer.FormatError):
            serializer.load(io.BytesIO(_forge(pickle.dumps({}, 2), [entry], [bytes(entry[0])])))


def test_deeply_nested_skeleton_does_not_crash() -> None:
    depth = 200_000
    stream = _forge(b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    obj = serializer.load(io.BytesIO(stream))
    for _ in range(depth - 1):
        (obj,) = obj
    assert obj == []
    assert serializer.read_index(io.BytesIO(stream)).tensors == []


def test_big_endian_stream_is_byteswapped() -> None:
    obj = {
        "f": make_tensor((3, 2), torch.float32),
        "c": make_tensor((4,), torch.complex64),
        "h": make_tensor((5,), torch.float16),
        "u": make_tensor((2,), torch.uint8),
    }
    buf = io.BytesIO()
    serializer.save(obj, buf)
    little = buf.getvalue()
    index = serializer.read_index(io.BytesIO(little))
    # Rewrite the stream as a big-endian writer would have written it.
    big = bytearray(little)
    big[12] |= _format.FLAG_BIG_ENDIAN
    struct.pack_into("<Q", big, 40, xxhash.xxh3_64_intdigest(bytes(big[:40])))
    header_end = _format.PREAMBLE_SIZE + 16 * len(index.storages) + len(little)  # upper bound
    pos = index.nbytes - _format.TRAILER_SIZE - sum(s.nbytes + 8 for s in index.storages)
    for s in index.storages:
        unit = _format.swap_unit(s.dtype_id)
        payload = bytearray(big[pos : pos + s.nbytes])
        for i in range(0, len(payload), unit):
            payload[i : i + unit] = payload[i : i + unit][::-1]
        big[pos : pos + s.nbytes] = payload
        struct.pack_into("<Q", big, pos + s.nbytes, xxhash.xxh3_64_intdigest(bytes(payload)))
        pos += s.nbytes + 8
    assert header_end > pos
    assert_same(serializer.load(io.BytesIO(bytes(big))), obj)
