"""Bad input: truncation and bit flips at every offset, hostile skeletons and headers."""

from __future__ import annotations

import io
import os
import pickle
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
    with pytest.raises(serializer.TruncatedError, match=r"storage 1 \(10 bytes, used by 'b'\): expected 10 bytes, received 0"):
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


def _forge(skeleton: bytes, table: list[tuple[int, int, int, int]] = (), payloads=()) -> bytes:
    """A stream with valid checksums around arbitrary content: what an attacker can send."""
    packed = _format.pack_storage_table(list(table))
    out = _format.pack_preamble(len(table), len(skeleton)) + packed + skeleton
    out += _format.pack_checksum(_format.header_checksum(packed, skeleton))
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


@pytest.mark.parametrize(
    "pid",
    [
        "nope",
        ("t", 0, 9, (1,), (1,), 0),  # too short
        ("x", 0, 9, (1,), (1,), 0, False),  # unknown kind
        ("t", 5, 9, (1,), (1,), 0, False),  # storage out of range
        ("t", 0, 9, (100,), (1,), 0, False),  # past the storage's end
        ("t", 0, 9, (2,), (1,), 1, False),  # offset pushes past the end
        ("t", 0, 9, (2,), (-1,), 0, False),  # negative stride
        ("t", 0, 6, (1,), (1,), 0, False),  # itemsize differs from the storage's
        ("t", 0, 999, (1,), (1,), 0, False),  # unknown dtype
        ("t", 0, 6, (1,), (1,), 0, True),  # requires_grad on an integer tensor
        ("t", 0, 9, (1, 2), (1,), 0, False),  # rank mismatch
    ],
)
def test_hostile_tensor_references(pid) -> None:
    class Ref:
        def __init__(self, pid):  # type: ignore[no-untyped-def]
            self.pid = pid

    class P(pickle.Pickler):
        def persistent_id(self, obj):  # type: ignore[no-untyped-def]
            return obj.pid if isinstance(obj, Ref) else None

    buf = io.BytesIO()
    P(buf, 2).dump({"t": Ref(pid)})
    stream = _forge(buf.getvalue(), [(8, 9, 0, -1)], [bytes(8)])
    if pid == ("t", 0, 6, (1,), (1,), 0, True):
        stream = _forge(buf.getvalue(), [(8, 6, 0, -1)], [bytes(8)])
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
    def preamble(major=1, count=0, skeleton_len=0, flags=0) -> bytes:  # type: ignore[no-untyped-def]
        head = struct.pack("<8sHHIQQ", _format.MAGIC, major, 0, flags, count, skeleton_len)
        return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))

    with pytest.raises(serializer.FormatError, match="storage count"):
        serializer.load(io.BytesIO(preamble(count=1 << 40)))
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
    struct.pack_into("<Q", data, 32, xxhash.xxh3_64_intdigest(bytes(data[:32])))
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
    struct.pack_into("<Q", big, 32, xxhash.xxh3_64_intdigest(bytes(big[:32])))
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
