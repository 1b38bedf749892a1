"""Bad input: truncation and bit flips at every offset, hostile skeletons and headers."""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import shlex

import pytest
import torch

import serializer
from serializer import _format
from testing import forge
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
    with pytest.raises(serializer.EndOfStream):  # nothing at all: a clean end, not a cut
        serializer.load(io.BytesIO(b""))
    for cut in range(1, len(data)):
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


def _flip_outcome(data: bytes, offset: int) -> tuple[type[Exception], str | None, int | None]:
    """The error a flip at `offset` must raise, in the order docs/FORMAT.md has the reader
    check: (error type, the part it names, the storage it names)."""
    index = serializer.read_index(io.BytesIO(data))
    trailer = len(data) - _format.TRAILER_SIZE
    pos = trailer - sum(s.nbytes + _format.CHECKSUM_SIZE for s in index.storages)
    if offset < len(_format.MAGIC):
        return serializer.FormatError, None, None  # checked before the preamble's checksum
    if offset < _format.PREAMBLE_SIZE:
        return serializer.ChecksumError, "preamble", None
    if offset < pos:
        return serializer.ChecksumError, "header", None
    for i, s in enumerate(index.storages):
        pos += s.nbytes + _format.CHECKSUM_SIZE
        if offset < pos:  # its payload or its checksum
            return serializer.ChecksumError, f"storage {i}", i
    if offset < trailer + len(_format.END_MAGIC):  # the end marker's magic, checked first
        return serializer.FormatError, None, None
    return serializer.ChecksumError, "end marker", None


def test_bit_flip_at_every_offset_raises_or_loads_identically() -> None:
    # Every byte is covered by a checksum, so no flip may load at all; and each raises the
    # error of the part it hit, naming that part (a flipped record names its storage).
    _, data = _small_stream()
    for offset in range(len(data)):
        kind, what, storage = _flip_outcome(data, offset)
        for bit in (0, 5):
            bad = bytearray(data)
            bad[offset] ^= 1 << bit
            with pytest.raises(serializer.SerializerError) as info:
                serializer.load(io.BytesIO(bytes(bad)))
            e = info.value
            assert type(e) is kind, f"flip at {offset}, bit {bit}: {e!r}"
            if isinstance(e, serializer.ChecksumError):
                assert (e.what, e.storage) == (what, storage), f"flip at {offset}: {e!r}"


def test_checksum_error_names_the_storage() -> None:
    _, data = _small_stream()
    bad = bytearray(data)
    # The last payload byte of b (storage 1): after it come b's checksum and the record of z
    # (storage 2, empty: a checksum only), then the trailer.
    bad[-_format.TRAILER_SIZE - 8 - 8 - 1] ^= 0x10
    with pytest.raises(
        serializer.ChecksumError, match=r"storage 1 \(10 bytes, used by 'b'\)"
    ) as info:
        serializer.load(io.BytesIO(bytes(bad)))
    assert (info.value.storage, info.value.keys) == (1, ("b",))
    # Its checksum flipped instead is the same storage's error.
    bad = bytearray(data)
    bad[-_format.TRAILER_SIZE - 8 - 1] ^= 0x10
    with pytest.raises(serializer.ChecksumError, match=r"storage 1 \(10 bytes, used by 'b'\)"):
        serializer.load(io.BytesIO(bytes(bad)))


def test_garbage_and_unknown_magic() -> None:
    rng = random.Random(0)
    noise = rng.randbytes(200)
    assert noise[0] not in (0x80, 0x89)  # neither torch's first byte nor ours
    for junk in (b"x" * 48, b"PK\x03\x04" + bytes(60), noise):
        with pytest.raises(serializer.FormatError, match="not a serializer stream") as info:
            serializer.load(io.BytesIO(junk))
        assert type(info.value) is serializer.FormatError
    # Nothing at all is no stream (a clean end). Fewer bytes than a preamble are a truncation
    # whatever they hold: the reader reads all 48 before it checks the magic (FORMAT.md).
    with pytest.raises(serializer.EndOfStream):
        serializer.load(io.BytesIO(b""))
    for short in (b"x", b"\x89SRLZ\r\n\x1a"):
        with pytest.raises(serializer.TruncatedError, match="in preamble"):
            serializer.load(io.BytesIO(short))


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


# Storage 0 of the forgeries below: 8 bytes of float32 (dtype id 9) on the CPU.
_F32_STORAGE = forge.storage_entry(8, 9)


def test_weights_only_never_runs_os_system(tmp_path) -> None:
    marker = tmp_path / "serializer-pwned"
    system = forge.Call(os.system, f"touch {shlex.quote(str(marker))}")
    buf = io.BytesIO()
    serializer.save({"x": system}, buf)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        serializer.load(io.BytesIO(buf.getvalue()))
    forged = forge.stream([], [], pickle.dumps({"x": system}, protocol=2))
    with pytest.raises(serializer.UnsafeGlobalError):
        serializer.load(io.BytesIO(forged))
    assert not marker.exists()
    # The check above can fail: a load that trusts the stream runs the command.
    assert serializer.load(io.BytesIO(forged), weights_only=False) == {"x": 0}
    assert marker.exists()


def test_well_formed_forgery_loads() -> None:
    """The forging helper itself makes valid streams (so the failures below are meaningful)."""
    stream = forge.stream(
        [(_F32_STORAGE, bytes(range(8)))],
        [forge.tensor_entry()],  # storage 0, float32, shape (2,), stride (1,)
        forge.skeleton({"t": forge.Ref(0)}),
    )
    out = serializer.load(io.BytesIO(stream))
    assert out["t"].view(torch.uint8).tolist() == list(range(8))


_PAST_END = "reaches past the 8 bytes of storage 0"


@pytest.mark.parametrize(
    "pid,entry,reason",
    [
        ("nope", forge.tensor_entry(), "names tensor 'nope' of 1"),  # not an index
        (1, forge.tensor_entry(), "names tensor 1 of 1"),  # tensor index out of range
        (-1, forge.tensor_entry(), "names tensor -1 of 1"),
        (0, forge.tensor_entry(storage=5), "names storage 5 of 1"),  # storage out of range
        (0, forge.tensor_entry(shape=(100,)), _PAST_END),  # past the storage's end
        (0, forge.tensor_entry(offset=1), "offset 1 " + _PAST_END),  # offset pushes past
        # itemsize (int64's 8) differs from the storage's (float32's 4)
        (0, forge.tensor_entry(dtype_id=6), "dtype int64 views storage 0 of dtype float32"),
        (0, forge.tensor_entry(dtype_id=999), "unknown dtype id 999"),
        (0, forge.tensor_entry(kind=7), "unknown kind 7"),
        (0, forge.tensor_entry(flags=0x40), "flags 64"),
        # shorter than its ndim
        (0, forge.tensor_entry(shape=(2, 1), stride=(1,), ndim=2), "ends inside tensor 0"),
        (0, forge.tensor_entry(ndim=100), "100 dimensions"),  # ndim over the limit
        (0, forge.tensor_entry() + b"xx", "2 bytes after its last entry"),
        # overflowing extent
        (0, forge.tensor_entry(shape=(1 << 62,), stride=(1 << 62,)), _PAST_END),
    ],
)
def test_hostile_tensor_entries(pid, entry, reason: str) -> None:  # type: ignore[no-untyped-def]
    stream = forge.stream(
        [(_F32_STORAGE, bytes(8))], [entry], forge.skeleton({"t": forge.Ref(pid)})
    )
    with pytest.raises(serializer.FormatError, match=re.escape(reason)) as info:
        serializer.load(io.BytesIO(stream))
    assert type(info.value) is serializer.FormatError  # neither a checksum nor a truncation


def test_requires_grad_on_integers_is_a_format_error() -> None:
    stream = forge.stream(
        [(forge.storage_entry(8, 6), bytes(8))],
        [forge.tensor_entry(dtype_id=6, flags=forge.FLAG_REQUIRES_GRAD, shape=(1,))],
        forge.skeleton({"t": forge.Ref(0)}),
    )
    with pytest.raises(serializer.FormatError, match="floating point dtype can require grad"):
        serializer.load(io.BytesIO(stream))
    # The same entry without the flag loads (so the flag is what is refused).
    plain = forge.stream(
        [(forge.storage_entry(8, 6), bytes(8))],
        [forge.tensor_entry(dtype_id=6, shape=(1,))],
        forge.skeleton({"t": forge.Ref(0)}),
    )
    assert serializer.load(io.BytesIO(plain))["t"].tolist() == [0]


@pytest.mark.parametrize(
    "skeleton",
    [b"", b"\x80\x02", b"garbage", b"\x80\x02]q\x00(K\x01" * 3, pickle.dumps(1)[:-1] + b"X"],
)
def test_malformed_skeletons(skeleton: bytes) -> None:
    with pytest.raises(serializer.FormatError, match="^skeleton ") as info:
        serializer.load(io.BytesIO(forge.stream([], [], skeleton)))
    assert type(info.value) is serializer.FormatError


def test_hostile_header_limits() -> None:
    def preamble(
        major: int = 1,
        count: int = 0,
        skeleton_len: int = 0,
        flags: int = 0,
        tensors: int = 0,
        tensor_len: int = 0,
    ) -> bytes:
        return forge.preamble(count, tensors, tensor_len, skeleton_len, major=major, flags=flags)

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
    obj, data = _small_stream()
    newer = forge.patch_preamble(data, minor=_format.MINOR + 3)
    assert serializer.read_index(io.BytesIO(newer)).version == (_format.MAJOR, _format.MINOR + 3)
    assert_same(serializer.load(io.BytesIO(newer)), obj)


def test_hostile_table_entries() -> None:
    # (nbytes, dtype id, device type id, device index[, reserved]), and why it is refused
    for entry, reason in [
        ((8, 999, 0, -1), "unknown dtype id 999"),
        ((8, 9, 77, -1), "unknown device type id 77"),
        ((7, 9, 0, -1), "7 bytes, not a whole number of float32 elements"),
        ((8, 9, 0, -5), "malformed table entry"),  # a device index below -1
        ((8, 9, 0, -1, 1), "malformed table entry"),  # a reserved field not zero
        ((8, 9, 0, -1), None),  # the same, well formed: it loads
    ]:
        stream = forge.stream(
            [(forge.storage_entry(*entry), bytes(entry[0]))], [], pickle.dumps({}, 2)
        )
        if reason is None:
            assert serializer.load(io.BytesIO(stream)) == {}
            continue
        with pytest.raises(serializer.FormatError, match=f"storage 0 .*{reason}") as info:
            serializer.load(io.BytesIO(stream))
        assert type(info.value) is serializer.FormatError


def test_deeply_nested_skeleton_does_not_crash() -> None:
    depth = 200_000
    stream = forge.stream([], [], b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
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
    pre = forge.unpack_preamble(little)
    assert pre.flags == 0  # saved on a little-endian machine
    big = bytearray(forge.patch_preamble(little, flags=_format.FLAG_BIG_ENDIAN))
    header_end = (
        forge.PREAMBLE_SIZE
        + forge.STORAGE_ENTRY_SIZE * pre.storage_count
        + pre.tensor_table_len
        + pre.skeleton_len
        + forge.CHECKSUM_SIZE
    )
    pos = index.nbytes - _format.TRAILER_SIZE - sum(s.nbytes + 8 for s in index.storages)
    # The records, counted back from the end, begin where the header ends...
    assert pos == header_end
    for s in index.storages:
        unit = _format.swap_unit(s.dtype_id)
        payload = bytearray(big[pos : pos + s.nbytes])
        for i in range(0, len(payload), unit):
            payload[i : i + unit] = payload[i : i + unit][::-1]
        big[pos : pos + s.nbytes] = payload
        pos += s.nbytes + 8
    # ... and end where the trailer begins.
    assert pos == len(big) - _format.TRAILER_SIZE
    forge.reseal(big)  # the records' checksums
    assert_same(serializer.load(io.BytesIO(bytes(big))), obj)
