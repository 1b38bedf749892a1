"""Bad input: truncation and bit flips at every offset, hostile skeletons and headers."""

from __future__ import annotations

import io
import os
import pickle
import random
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


@pytest.mark.parametrize(
    "pid,entry",
    [
        ("nope", forge.tensor_entry()),  # a persistent id that is not an index
        (1, forge.tensor_entry()),  # tensor index out of range
        (-1, forge.tensor_entry()),
        (0, forge.tensor_entry(storage=5)),  # storage out of range
        (0, forge.tensor_entry(shape=(100,))),  # past the storage's end
        (0, forge.tensor_entry(offset=1)),  # offset pushes past the end
        (0, forge.tensor_entry(dtype_id=6)),  # itemsize differs from the storage's
        (0, forge.tensor_entry(dtype_id=999)),  # unknown dtype
        (0, forge.tensor_entry(kind=7)),  # unknown kind
        (0, forge.tensor_entry(flags=0x40)),  # unknown flags
        (0, forge.tensor_entry(shape=(2, 1), stride=(1,), ndim=2)),  # shorter than its ndim
        (0, forge.tensor_entry(ndim=100)),  # ndim over the limit
        (0, forge.tensor_entry() + b"xx"),  # bytes after the last entry
        (0, forge.tensor_entry(shape=(1 << 62,), stride=(1 << 62,))),  # overflowing extent
    ],
)
def test_hostile_tensor_entries(pid, entry) -> None:  # type: ignore[no-untyped-def]
    stream = forge.stream(
        [(_F32_STORAGE, bytes(8))], [entry], forge.skeleton({"t": forge.Ref(pid)})
    )
    with pytest.raises(serializer.FormatError):
        serializer.load(io.BytesIO(stream))


def test_requires_grad_on_integers_is_a_format_error() -> None:
    stream = forge.stream(
        [(forge.storage_entry(8, 6), bytes(8))],
        [forge.tensor_entry(dtype_id=6, flags=forge.FLAG_REQUIRES_GRAD, shape=(1,))],
        forge.skeleton({"t": forge.Ref(0)}),
    )
    with pytest.raises(serializer.FormatError):
        serializer.load(io.BytesIO(stream))


@pytest.mark.parametrize(
    "skeleton",
    [b"", b"\x80\x02", b"garbage", b"\x80\x02]q\x00(K\x01" * 3, pickle.dumps(1)[:-1] + b"X"],
)
def test_malformed_skeletons(skeleton: bytes) -> None:
    with pytest.raises(serializer.FormatError):
        serializer.load(io.BytesIO(forge.stream([], [], skeleton)))


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
    # (nbytes, dtype id, device type id, device index[, reserved])
    for entry in [(8, 999, 0, -1), (8, 9, 77, -1), (7, 9, 0, -1), (8, 9, 0, -5), (8, 9, 0, -1, 1)]:
        stream = forge.stream(
            [(forge.storage_entry(*entry), bytes(entry[0]))], [], pickle.dumps({}, 2)
        )
        with pytest.raises(serializer.FormatError):
            serializer.load(io.BytesIO(stream))


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
