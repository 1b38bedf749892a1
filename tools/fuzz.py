"""Coverage-guided fuzzing of the stream readers: `load` under both `weights_only` values,
`read_index`, `load_keys` and `load_into`. docs/SECURITY.md#fuzzing has the design, what
counts as a finding, and the campaigns run so far.

    python -m tools.fuzz --seconds 600                   # every target in turn (nox -s fuzz)
    python -m tools.fuzz --seconds 120 --target load_into
    python -m tools.fuzz --replay FILE... [--target T]   # each file through each target
    python -m tools.fuzz --make-seeds                    # rewrite tools/fuzz_corpus/seeds/

The engine is atheris (libFuzzer, coverage-guided) when it is installed, else a plain random
mutator with no coverage feedback (enough for a smoke test). A supervisor (this process) runs
the fuzzer in a child process under an address-space limit, with libFuzzer's per-input time
and RSS limits; when the child stops on a finding it replays the input in a fresh child to
classify it, records it, and starts the fuzzer again with that finding's signature ignored.

Inputs are mutated structure-aware (`Mutator`): a serializer stream is cut into its parts,
a part or a field is mutated, and the stream is put together again with every checksum
valid, so that mutations reach past the checksums; some mutations leave the checksums as they
are. Torch's `_streaming_save` streams are mutated record by record.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import mmap
import os
import pickle
import random
import re
import resource
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import xxhash

from testing import forge

ROOT = Path(__file__).absolute().parent.parent  # not resolved: Bazel runfiles are links
CORPUS = ROOT / "tools" / "fuzz_corpus"
SEEDS = CORPUS / "seeds"
OUR_SEEDS = SEEDS / "serializer"  # streams of this library's format
TORCH_SEEDS = SEEDS / "torch"  # streams of torch's _streaming_save
FINDINGS = CORPUS / "findings"  # reproducers of past findings, replayed by tools/fuzz_test.py
MANIFEST = FINDINGS / "manifest.json"

TARGETS = ("load", "load_unsafe", "read_index", "load_keys", "load_into")
TORCH_TARGETS = ("load", "load_unsafe")  # only load reads torch's own streams
DEFAULT_TIMEOUT_S = 10  # per input
DEFAULT_RSS_MB = 1024  # RSS one input may add (a process with torch imported holds ~300 MB)
DEFAULT_AS_MB = 8192  # address space of a fuzzing or replaying process
MAX_LEN = 16384  # largest input the fuzzer makes
_STATE_HEAD = 16  # state file: u64 executions, u32 length of the current input, 4 spare


# ---------------------------------------------------------------------------- findings


class Finding(Exception):
    """The library mishandled an input: `kind` says how, `where` where (for a signature)."""

    def __init__(self, kind: str, message: str, where: str = "") -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.where = where
        self.target = ""

    @property
    def signature(self) -> str:
        """What two findings of one bug share: target, kind and the raising line."""
        return f"{self.target}:{self.kind}" + (f"@{self.where}" if self.where else "")


class _Untrusted(BaseException):  # noqa: N818 - not an error: the input is skipped
    """load_unsafe met a skeleton that is not one of the seeds' (see `_trusted_pickle`)."""


def _where(e: BaseException) -> str:
    """The innermost frame of `e`'s traceback, as path:function relative to its package root
    (not the line, which moves whenever the file is edited)."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    path = frame.filename
    for marker in ("/site-packages/", f"{ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{frame.name}"


# ---------------------------------------------------------------------------- our format

_PREAMBLE = struct.Struct("<8sHHIIIQQ")  # the 40 bytes the preamble checksum covers
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_TRAILER = struct.Struct("<8sQQ")
_MASK64 = (1 << 64) - 1


def _sum(data: bytes | bytearray) -> bytes:
    return _U64.pack(xxhash.xxh3_64_intdigest(bytes(data)))


@dataclasses.dataclass
class Layout:
    """A serializer stream cut into its parts (lengths and counts follow from the parts,
    except the tensor count, which the tensor table does not give by itself)."""

    major: int
    minor: int
    flags: int
    tensor_count: int
    storages: list[bytes]  # 16-byte storage table entries
    tensors: bytes  # the tensor table
    skeleton: bytes
    records: list[bytes]  # one payload per storage entry

    def assemble(self) -> bytes:
        """The stream, with valid checksums, counts, lengths and trailer."""
        head = _PREAMBLE.pack(
            forge.MAGIC,
            self.major & 0xFFFF,
            self.minor & 0xFFFF,
            self.flags & 0xFFFFFFFF,
            len(self.storages),
            self.tensor_count & 0xFFFFFFFF,
            len(self.tensors),
            len(self.skeleton),
        )
        out = bytearray(head)
        out += _sum(head)
        header = b"".join(self.storages) + self.tensors + self.skeleton
        out += header
        out += _sum(header)
        for payload in self.records:
            out += payload
            out += _sum(payload)
        trailer = _TRAILER.pack(forge.END_MAGIC, len(self.storages), len(out))
        out += trailer
        out += _sum(trailer)
        return bytes(out)


def split(data: bytes) -> Layout | None:
    """`data` cut into a `Layout` where its preamble's counts and lengths fit in it; checksums
    and the trailer are not looked at (bytes after the last record are dropped)."""
    if len(data) < forge.PREAMBLE_SIZE or data[:8] != forge.MAGIC:
        return None
    _, major, minor, flags, scount, tcount, tlen, slen = _PREAMBLE.unpack_from(data)
    table_end = forge.PREAMBLE_SIZE + forge.STORAGE_ENTRY_SIZE * scount
    header_end = table_end + tlen + slen
    if header_end + 8 > len(data):
        return None
    storages = [data[p : p + 16] for p in range(forge.PREAMBLE_SIZE, table_end, 16)]
    pos = header_end + 8
    records = []
    for entry in storages:
        n = _U64.unpack_from(entry)[0]
        if pos + n + 8 > len(data):
            return None
        records.append(data[pos : pos + n])
        pos += n + 8
    return Layout(
        major,
        minor,
        flags,
        tcount,
        storages,
        data[table_end : table_end + tlen],
        data[table_end + tlen : header_end],
        records,
    )


def reseal(data: bytes) -> bytes:
    """`data` with every checksum recomputed that its (maybe mutated) preamble lets us find:
    the preamble's, then the header's, each record's and the trailer's while they fit."""
    if len(data) < forge.PREAMBLE_SIZE or data[:8] != forge.MAGIC:
        return data
    b = bytearray(data)
    b[40:48] = _sum(b[:40])
    _, _, _, _, scount, _, tlen, slen = _PREAMBLE.unpack_from(b)
    table_end = forge.PREAMBLE_SIZE + 16 * scount
    header_end = table_end + tlen + slen
    if header_end + 8 > len(b):
        return bytes(b)
    b[header_end : header_end + 8] = _sum(b[forge.PREAMBLE_SIZE : header_end])
    pos = header_end + 8
    for i in range(scount):
        n = _U64.unpack_from(b, forge.PREAMBLE_SIZE + 16 * i)[0]
        if pos + n + 8 > len(b):
            return bytes(b)
        b[pos + n : pos + n + 8] = _sum(b[pos : pos + n])
        pos += n + 8
    if pos + 32 <= len(b):
        b[pos + 24 : pos + 32] = _sum(b[pos : pos + 24])
    return bytes(b)


# ---------------------------------------------------------------------------- torch's format


@dataclasses.dataclass
class TorchLayout:
    """A stream of torch's `_streaming_save`: a pickled list of entries (key, is_storage,
    length), then each entry's bytes. Lengths are kept as given (they may lie)."""

    entries: list[tuple[str, bool, int]]
    records: list[bytes]

    def assemble(self) -> bytes:
        from torch.distributed._serialization import _Entry

        head = pickle.dumps([_Entry(k, s, n) for k, s, n in self.entries], protocol=2)
        return head + b"".join(self.records)

    def record(self, key: str) -> bytes | None:
        found = None
        for (k, _, _), data in zip(self.entries, self.records, strict=True):
            if k == key:
                found = data  # the last one wins, as in torch's reader
        return found


def torch_split(data: bytes) -> TorchLayout | None:
    if data[:1] != b"\x80":
        return None
    # Parsed as torch's reader parses it, by torch's pure-Python weights_only unpickler (the C
    # unpickler would let a mutated memo index allocate gigabytes in the harness itself).
    from torch import _weights_only_unpickler
    from torch.distributed import _serialization  # noqa: F401 - allowlists its _Entry

    f = io.BytesIO(data)
    try:
        raw = _weights_only_unpickler.load(f)
    except Exception:
        return None
    if not isinstance(raw, list):
        return None
    entries, records = [], []
    for item in raw:
        fields = getattr(item, "__dict__", None)
        if not isinstance(fields, dict):
            return None
        key, is_storage, n = fields.get("key"), fields.get("is_storage"), fields.get("length")
        if type(key) is not str or type(is_storage) is not bool or type(n) is not int or n < 0:
            return None
        payload = f.read(n)
        if len(payload) != n:
            return None
        entries.append((key, is_storage, n))
        records.append(payload)
    return TorchLayout(entries, records)


def skeleton_of(data: bytes) -> bytes | None:
    """The pickle of a stream's object: our skeleton, or torch's data.pkl record."""
    layout = split(data)
    if layout is not None:
        return layout.skeleton
    theirs = torch_split(data)
    return theirs.record("data.pkl") if theirs is not None else None


# ---------------------------------------------------------------------------- seeds


def make_seeds() -> dict[str, bytes]:
    """Small valid streams: file name (under seeds/) -> bytes. Deterministic for one torch."""
    import collections

    import torch
    from torch.distributed._serialization import _streaming_save

    import serializer

    def ours(obj: Any, protocol: int = 2) -> bytes:
        buf = io.BytesIO()
        serializer.save(obj, buf, pickle_protocol=protocol)
        return buf.getvalue()

    def theirs(obj: Any) -> bytes:
        buf = io.BytesIO()
        _streaming_save(obj, buf)
        return buf.getvalue()

    def t(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
        from testing.cases import make_tensor

        return make_tensor((n,), dtype, seed=seed)

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    views = {
        "a": base,
        "row": base[1],
        "col": base[:, 1],
        "t": base.t(),
        "off": base.view(-1)[5:9],
        "as_int": base.view(torch.int32)[0],
        "expand": torch.arange(3.0).expand(4, 3),
        "cl": torch.arange(8.0).reshape(1, 2, 2, 2).to(memory_format=torch.channels_last),
    }
    shared = t(4)
    nested = {
        "a": shared,
        "n": {
            "x": [t(2, torch.float16), (t(3, torch.int64), "s", 3, 1.5, None, True, b"by")],
            "same": shared,
            "big": 2**70,
            "c": complex(1, 2),
            "size": torch.Size([2, 3]),
            "dtype": torch.bfloat16,
            "device": torch.device("cpu"),
            "set": {1, 2},
            "frozen": frozenset({"f"}),
            "od": collections.OrderedDict(k=t(1, torch.int8)),
            "slice": slice(1, 5, 2),
            "ba": bytearray(b"xy"),
        },
    }
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + i)
    state = module.state_dict()
    params = {
        "a": torch.nn.Parameter(t(3)),
        "frozen": torch.nn.Parameter(t(2, seed=1), requires_grad=False),
        "grad": t(2, seed=2).requires_grad_(),
    }
    ints = {
        "a": t(2, torch.int32),
        **{str(d).removeprefix("torch."): t(2, d) for d in (
            torch.bool, torch.uint8, torch.int8, torch.int16, torch.int64, torch.uint16,
            torch.uint32, torch.uint64,
        )},
    }  # fmt: skip
    floats = {
        "a": t(2),
        **{
            name: t(2, getattr(torch, name))
            for name in (
                "float16", "bfloat16", "float64", "complex32", "complex64", "complex128",
                "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8", "bits16",
            )
            if hasattr(torch, name)
        },
    }  # fmt: skip
    scalars = {"a": torch.tensor(3.5), "empty": torch.zeros(0), "empty2": torch.zeros(0, 3)}
    basic = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2])}

    seeds = {
        "serializer/basic.srlz": ours(basic),
        "serializer/views.srlz": ours(views),
        "serializer/nested.srlz": ours(nested),
        "serializer/module.srlz": ours(state),
        "serializer/params.srlz": ours(params),
        "serializer/ints.srlz": ours(ints),
        "serializer/floats.srlz": ours(floats),
        "serializer/scalars.srlz": ours(scalars),
        "serializer/empty.srlz": ours({}),
        "serializer/list.srlz": ours([t(2), (t(1, torch.int64),)]),
        "serializer/protocol4.srlz": ours({"a": base, "n": {"v": base[0], "k": "w"}}, 4),
        "serializer/protocol5.srlz": ours({"a": t(3), "n": [t(2, torch.int16)]}, 5),
        "serializer/trailing_bytes.srlz": ours(basic) + b"\x89SRLZ next stream",
        "serializer/big_endian.srlz": _big_endian(ours(floats | ints)),
        "serializer/cuda_location.srlz": _forged_cuda(),
        "serializer/dtensor.srlz": _forged_dtensor(sliced=False),
        "serializer/dtensor_sliced.srlz": _forged_dtensor(sliced=True),
        "torch/basic.torch": theirs(basic),
        "torch/views.torch": theirs({"a": base, "row": base[1], "t": base.t()}),
        "torch/nested.torch": theirs(
            {"a": shared, "n": {"x": [t(2, torch.float16), (shared, "s", 3)], "d": torch.int8}}
        ),
        "torch/module.torch": theirs(state),
        "torch/params.torch": theirs(params),
        "torch/empty.torch": theirs({}),
        "torch/scalars.torch": theirs(scalars),
    }
    return seeds


def _big_endian(data: bytes) -> bytes:
    """`data` rewritten as a big-endian host would write it (flag bit 0, payloads swapped)."""
    parts = forge.parse(data)
    storages = []
    for entry, payload in parts.storages:
        name, size = forge.DTYPE_TABLE[forge.unpack_storage_entry(entry).dtype_id]
        unit = size // 2 if name.startswith("complex") else size
        swapped = b"".join(payload[i : i + unit][::-1] for i in range(0, len(payload), unit))
        storages.append((entry, swapped))
    return parts.stream(storages=storages, flags=forge.FLAG_BIG_ENDIAN)


def _forged_cuda() -> bytes:
    f32 = forge.dtype_id("float32")
    cuda = forge.DEVICE_TYPE_IDS["cuda"]
    return forge.stream(
        [
            (forge.storage_entry(8, f32, device_type_id=cuda, device_index=0), bytes(range(8))),
            (forge.storage_entry(4, f32), bytes(4)),
        ],
        [
            forge.tensor_entry(storage=0, dtype_id=f32, shape=(2,), stride=(1,)),
            forge.tensor_entry(storage=1, dtype_id=f32, shape=(1,), stride=(1,)),
        ],
        forge.skeleton({"a": forge.Ref(1), "gpu": forge.Ref(0)}),
    )


def _forged_dtensor(sliced: bool) -> bytes:
    """A DTensor record as docs/FORMAT.md gives it (no process group is needed to write it;
    loading it without one is a TopologyError, after the spec is validated)."""
    from serializer.distributed.dtensor import _rebuild_dtensor

    f32 = forge.dtype_id("float32")
    mesh: dict[str, Any] = {"device_type": "cpu", "ranks": [0], "dim_names": None}
    placements: tuple[Any, ...] = (("shard", 0),)
    extra: dict[str, Any] = {}
    if sliced:
        mesh = {
            "device_type": "cpu",
            "ranks": [[0]],
            "dim_names": ("dp", "tp"),
            "root_ranks": [[[0]]],
            "root_dim_names": ("a", "b", "tp"),
            "slice": (("dp", ("a", "b")), "tp"),
        }
        placements = (("replicate",), ("strided_shard", 0, 2))
        extra = {"shard_order": ((0, (1,)),), "strided_shard_as_shard_order": False}
    meta = {
        "version": 1,
        "mesh": mesh,
        "placements": placements,
        "shape": (4,),
        "stride": (1,),
        "requires_grad": False,
        "parameter": sliced,
        "rank": 0,
        "world_size": 1,
        "coordinate": (0,) * (2 if sliced else 1),
        **extra,
    }
    return forge.stream(
        [(forge.storage_entry(16, f32), bytes(range(16))), (forge.storage_entry(4, f32), bytes(4))],
        [
            forge.tensor_entry(storage=0, dtype_id=f32, shape=(4,), stride=(1,)),
            forge.tensor_entry(storage=1, dtype_id=f32, shape=(1,), stride=(1,)),
        ],
        forge.skeleton({"a": forge.Ref(1), "d": forge.Call(_rebuild_dtensor, forge.Ref(0), meta)}),
    )


def seed_files(target: str | None = None) -> list[Path]:
    """The committed seeds a target is fuzzed from (every seed when `target` is None)."""
    dirs = [OUR_SEEDS] + ([TORCH_SEEDS] if target is None or target in TORCH_TARGETS else [])
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())


def write_seeds() -> None:
    for d in (OUR_SEEDS, TORCH_SEEDS):
        if d.is_dir():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for name, data in make_seeds().items():
        (SEEDS / name).write_bytes(data)
        print(f"{SEEDS / name}: {len(data)} bytes")


# ---------------------------------------------------------------------------- targets

_STEPS = (13, 127, 4093)  # bytes per read of `_Trickle`, chosen by the input's hash
_DEST_LIMIT = 1 << 24  # bytes of destination tensors load_into is given at most
_COMPARE_LIMIT = 1 << 22  # elements of a tensor compared with what its record gives
_trusted: frozenset[int] = frozenset()  # xxh3 of the seeds' skeletons (load_unsafe)
_serializer_dir = ""


class _Trickle(io.RawIOBase):
    """A non-seekable file that returns at most `step` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._step, len(self._data) - self.pos)
        b[:n] = self._data[self.pos : self.pos + n]
        self.pos += n
        return n


def _hash(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _trusted_pickle() -> Any:
    """A pickle module for load_unsafe whose Unpickler refuses (with `_Untrusted`, which the
    harness counts as a skipped input) any pickle but the skeletons of the seeds: a stream
    loaded with weights_only=False is code the caller trusts, so only its framing, tables and
    data are fuzzed, never what its pickle calls (docs/SECURITY.md#fuzzing)."""

    class Unpickler(pickle.Unpickler):
        def __init__(self, file: Any, *args: Any, **kwargs: Any) -> None:
            data = file.getvalue() if isinstance(file, io.BytesIO) else None
            if data is None or _hash(data) not in _trusted:
                raise _Untrusted()
            super().__init__(file, *args, **kwargs)

    module = types.ModuleType("tools_fuzz_trusted_pickle")
    module.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")})
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    return module


_TRUSTED_PICKLE = _trusted_pickle()


def _check_sealed(target: str, data: bytes, end: int, records: bool = True) -> None:
    """A reader accepted `data[:end]` as one stream: an independent reader of docs/FORMAT.md
    (testing/forge) must agree that it is one, with valid preamble, header and trailer
    checksums, and, with `records`, valid record checksums (a reader that seeks past the
    records it does not need verifies only those it reads: see `_check_records`)."""
    try:
        parts = forge.parse(data[:end], verify=records)
        if not records:
            pre, trailer = data[:40], data[parts.trailer_offset : parts.trailer_offset + 24]
            header = data[forge.PREAMBLE_SIZE : parts.header_checksum_offset]
            for what, piece, at in (
                ("preamble", pre, 40),
                ("header", header, parts.header_checksum_offset),
                ("trailer", trailer, parts.trailer_offset + 24),
            ):
                if _sum(piece) != data[at : at + 8]:
                    raise forge.ParseError(f"{what} checksum does not match")
    except Exception as e:
        raise Finding(
            "accepted-bad-stream",
            f"{target} accepted the first {end} bytes as a stream, which testing/forge "
            f"rejects: {type(e).__name__}: {e}",
        ) from None


def _check_records(data: bytes, end: int, pairs: Iterable[tuple[str, Any, Any]]) -> None:
    """Each (key, index entry, tensor) a reader returned must hold what the entry's view of
    its storage's record gives, decoded here independently (testing/forge's parse, then
    torch's as_strided), from a record whose checksum matches."""
    import torch

    parts = forge.parse(data[:end], verify=False)
    swap = bool(parts.preamble.flags & forge.FLAG_BIG_ENDIAN) != (sys.byteorder == "big")
    for key, entry, tensor in pairs:
        storage, payload = parts.storages[entry.storage]
        at = parts.record_offsets[entry.storage] + len(payload)
        if _sum(payload) != data[at : at + 8]:
            raise Finding(
                "unverified-record",
                f"{key!r} was loaded from storage {entry.storage}, whose record does not "
                "match its checksum",
            )
        raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else None
        if raw is None or tensor.numel() == 0:
            if tuple(tensor.shape) != tuple(entry.shape):
                raise Finding("wrong-tensor", f"{key!r}: shape {tuple(tensor.shape)}, not "
                              f"{entry.shape}")  # fmt: skip
            continue
        name, size = forge.DTYPE_TABLE[forge.unpack_storage_entry(storage).dtype_id]
        unit = size // 2 if name.startswith("complex") else size
        if swap and unit > 1:
            raw = raw.view(-1, unit).flip(-1).reshape(-1)
        try:
            expected = raw.view(entry.dtype).as_strided(
                entry.shape, entry.stride, entry.storage_offset
            )
        except Exception:
            continue  # torch cannot view it so (no verdict)
        _same_bits(key, tensor, expected)


def _has_sets(obj: Any) -> bool:
    """Whether a set appears in `obj` (set members have no stable key or order)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, (set, frozenset)):
            return True
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            stack.extend(vars(value).values())
    return False


def _same(kind: str, actual: Any, expected: Any) -> None:
    """`actual` must equal `expected` bit for bit, with the same structure and sharing
    (where the two can be compared at all)."""
    from testing.cases import assert_same

    if _has_sets(expected):
        return
    try:
        assert_same(actual, expected)
    except AssertionError as e:
        raise Finding(kind, str(e)[:2000]) from None
    except Exception:
        return  # not comparable (e.g. a dtype torch cannot copy): no verdict


def _tensors(obj: Any) -> list[tuple[str, Any]]:
    import torch

    from serializer._build import find

    return find(obj, torch.Tensor)


def _sets_in(obj: Any) -> list[str]:
    """The dotted keys of the sets inside `obj`: the library numbers their members in
    stream order, which only the outline and the load itself know (a loaded set iterates
    in another order), so an oracle can follow keys into a set only through read_index."""
    from serializer._build import find

    return [path for path, _ in find(obj, (set, frozenset))]


def _load(data: bytes) -> Any:
    import serializer

    f = io.BytesIO(data)
    obj = serializer.load(f)
    if data[:8] != forge.MAGIC:
        return obj
    _check_sealed("load", data, f.tell())
    # The same stream read through short reads from a non-seekable file loads the same.
    step = _STEPS[_hash(data) % len(_STEPS)]
    try:
        other = serializer.load(_Trickle(data, step))
    except serializer.SerializerError as e:
        message = f"loads from a BytesIO, not in {step}-byte reads: {e!r}"
        raise Finding("short-reads", message) from None
    _same("short-reads", other, obj)
    # read_index lists what load returns.
    try:
        index = serializer.read_index(io.BytesIO(data))
    except serializer.SerializerError as e:
        raise Finding("index-differs", f"load succeeds, read_index fails: {e!r}") from None
    if not _has_sets(obj):
        import torch

        tensors = _tensors(obj)
        loaded = [
            (t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.requires_grad,
             isinstance(t, torch.nn.Parameter))
            for _, t in tensors
        ]  # fmt: skip
        listed = [
            (e.dtype, e.shape, e.stride, e.storage_offset, e.requires_grad, e.parameter)
            for e in index.tensors
        ]
        if loaded != listed:
            message = f"load gives {loaded!r:.800}, read_index {listed!r:.800}"
            raise Finding("index-differs", message)
        pairs = zip(index.tensors, tensors, strict=True)
        _check_records(data, f.tell(), ((e.key, e, t) for e, (_, t) in pairs))
        keys, names = [k for k, _ in tensors], [e.key for e in index.tensors]
        if keys != names:
            message = f"load names {keys!r:.600}, read_index {names!r:.600}"
            raise Finding("index-keys-differ", message)
    return obj


def _load_unsafe(data: bytes) -> Any:
    import serializer

    f = io.BytesIO(data)
    obj = serializer.load(f, weights_only=False, pickle_module=_TRUSTED_PICKLE)
    if data[:8] == forge.MAGIC:
        _check_sealed("load_unsafe", data, f.tell())
    return obj


def _read_index(data: bytes) -> Any:
    """A seekable file (records skipped) and a non-seekable one (records read and verified)."""
    import serializer

    seekable_error = None
    try:
        seekable = serializer.read_index(io.BytesIO(data))
    except serializer.SerializerError as e:
        seekable_error = e
    step = _STEPS[_hash(data) % len(_STEPS)]
    source = _Trickle(data, step)
    try:
        index = serializer.read_index(source)
    except serializer.ChecksumError:
        return None  # a seekable file's records are skipped unread, by design
    except serializer.SerializerError as e:
        if seekable_error is None:
            message = f"a seekable file lists, a non-seekable fails: {e!r}"
            raise Finding("index-sources", message) from None
        raise
    if seekable_error is not None:
        raise Finding(
            "index-sources", f"a non-seekable file lists, a seekable fails: {seekable_error!r}"
        )
    _check_sealed("read_index", data, source.pos)
    _check_sealed("read_index", data, seekable.nbytes, records=False)
    if (index.tensors, index.storages, index.nbytes, index.version) != (
        seekable.tensors, seekable.storages, seekable.nbytes, seekable.version
    ):  # fmt: skip
        raise Finding("index-sources", "a seekable and a non-seekable file list differently")
    return index


def _load_keys(data: bytes) -> Any:
    import serializer
    from serializer._build import at_path

    keys, index = _keys_for(data)
    f = io.BytesIO(data)
    part = serializer.load_keys(f, keys)  # records it does not need are seeked past
    _check_sealed("load_keys", data, f.tell(), records=False)
    if list(part) != keys:
        raise Finding("keys-differ", f"load_keys({keys}) returned keys {list(part)!r:.300}")
    if index is None:
        raise Finding("index-differs", "load_keys succeeds, read_index fails")
    entries: dict[str, Any] = {}
    for entry in index.tensors:
        if entry.key in entries:
            return part  # two tensors under one key: no telling which is which
        entries[entry.key] = entry
    pairs = []
    for key in keys:
        if _has_sets(part[key]):
            continue  # numbered in stream order, which the loaded set no longer shows
        for sub, t in _tensors(part[key]):
            full = f"{key}.{sub}" if sub else str(key)
            if full not in entries:
                raise Finding("index-keys-differ", f"load_keys gives {full!r}, read_index not")
            pairs.append((full, entries[full], t))
    _check_records(data, f.tell(), pairs)
    try:
        whole = serializer.load(io.BytesIO(data))
    except serializer.SerializerError:
        return part
    sets = _sets_in(whole)
    for key in keys:
        if any(str(key).startswith(f"{path}.") for path in sets):
            continue  # a member of a set, numbered in stream order (see _sets_in)
        _same("keys-differ", part[key], whole[key] if key in whole else at_path(whole, key))
    return part


def _keys_for(data: bytes) -> tuple[list[str], Any]:
    """One or two top-level keys of the stream's object, guessed from its index (a dotted
    key's first part, or all of it, by the input's hash), or "a" where it has no index;
    and the index."""
    import serializer

    try:
        index = serializer.read_index(io.BytesIO(data))
    except serializer.SerializerError:
        return ["a"], None
    h = _hash(data)
    keys = []
    for entry in index.tensors:
        key = entry.key if h & 1 else entry.key.split(".")[0]
        if key not in keys:
            keys.append(key)
    if not keys:
        return ["a"], index
    first = (h >> 1) % len(keys)
    return keys[first : first + 1 + (h >> 8) % 2], index


def _destination(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors shaped as the stream's (from read_index) and the index entry of each, or a
    small guess and no entries where it has no index. Half the inputs (by hash) get
    non-contiguous destinations where they are 2-d or more."""
    import torch

    import serializer

    fallback: tuple[dict[str, Any], dict[str, Any]] = ({"a": torch.zeros(2, 3)}, {})
    try:
        index = serializer.read_index(io.BytesIO(data))
    except serializer.SerializerError:
        return fallback
    permute = _hash(data) & 1
    total = 0
    dest, entries = {}, {}
    for entry in index.tensors:
        total += entry.nbytes
        if total > _DEST_LIMIT:
            return fallback
        shape = entry.shape
        try:
            if permute and len(shape) >= 2:
                order = list(range(len(shape)))[::-1]
                t = torch.zeros(shape[::-1], dtype=entry.dtype).permute(order)
            else:
                t = torch.zeros(shape, dtype=entry.dtype)
        except Exception:
            try:
                t = torch.empty(shape, dtype=entry.dtype)
            except Exception:
                return fallback
        dest[entry.key] = t
        entries[entry.key] = entry
    return dest, entries


def _load_into(data: bytes) -> Any:
    import serializer

    dest, entries = _destination(data)
    f = io.BytesIO(data)
    result = serializer.load_into(dest, f, strict=bool(entries))
    _check_sealed("load_into", data, f.tell(), records=False)  # unneeded records: seeked past
    _check_records(data, f.tell(), ((key, entry, dest[key]) for key, entry in entries.items()))
    return result


def _same_bits(key: str, actual: Any, expected: Any) -> None:
    import torch

    if tuple(actual.shape) != tuple(expected.shape) or actual.dtype != expected.dtype:
        raise Finding(
            "wrong-tensor",
            f"{key!r}: {actual.dtype} {tuple(actual.shape)}, not {expected.dtype} "
            f"{tuple(expected.shape)}",
        )
    if actual.numel() == 0 or actual.numel() > _COMPARE_LIMIT:
        return  # nothing to compare, or a broadcast view too large to copy for comparing
    try:
        a = actual.detach().contiguous().reshape(-1).view(torch.uint8)
        e = expected.detach().contiguous().reshape(-1).view(torch.uint8)
        same = torch.equal(a, e)
    except Exception:
        return  # a dtype or layout torch cannot copy, view or compare: no verdict
    if not same:
        if actual.dtype == torch.bool and torch.equal(a != 0, e != 0):
            message = f"{key!r}: its record's bool bytes other than 0 and 1 came out as 1"
            raise Finding("noncanonical-bool", message)
        raise Finding("wrong-tensor", f"{key!r}: other bytes than its record gives")


_TARGET_FUNCS: dict[str, Callable[[bytes], Any]] = {
    "load": _load,
    "load_unsafe": _load_unsafe,
    "read_index": _read_index,
    "load_keys": _load_keys,
    "load_into": _load_into,
}


# The library's functions that call the object's unpickler (ours, or torch's reader).
_UNPICKLING_CALLERS = {
    ("_pickling.py", "loads"),
    ("_pickling.py", "_loads"),
    ("_torch_compat.py", "load_torch_stream"),
}


def _object_code(e: BaseException) -> bool:
    """Whether `e` came out of unpickling the object under weights_only=False (its own code
    or pickle's, passed through as documented), not out of the library's own code."""
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(_serializer_dir)
    ]
    if not frames:
        return False
    last = frames[-1]
    return (os.path.basename(last.filename), last.name) in _UNPICKLING_CALLERS


def check(target: str, data: bytes) -> str:
    """Run `data` through `target` and say how it ended ("loaded", "refused: FormatError",
    "skipped", "passed through: ValueError"); raise `Finding` if the library mishandled it."""
    import serializer

    try:
        _TARGET_FUNCS[target](data)
    except _Untrusted:
        return "skipped"
    except Finding as f:
        f.target = target
        raise
    except serializer.SerializerError as e:
        return f"refused: {type(e).__name__}"
    except Exception as e:
        if target == "load_unsafe" and _object_code(e):
            return f"passed through: {type(e).__name__}"
        finding = Finding(f"escaped-{type(e).__name__}", f"{e!s:.1000}", _where(e))
        finding.target = target
        raise finding from e
    return "loaded"


def prepare(instrument: bool = False) -> None:
    """Import what the targets use (under atheris' instrumentation if asked), once per
    process, and load the trusted skeletons of the seeds."""
    global _trusted, _serializer_dir
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):  # torch < 2.7 has no streaming functions
        import torch.distributed._serialization  # noqa: F401

    modules = [
        "serializer",
        "serializer.backends.cpu",
        "serializer.backends.distributed",
        "serializer.distributed.dtensor",
    ]
    if instrument:
        import atheris

        # Only the library is instrumented: torch's pure-Python unpickler, instrumented too,
        # made torch-format inputs several times slower for coverage of torch's own code.
        with atheris.instrument_imports(include=["serializer"]):
            for name in modules:
                __import__(name)
    else:
        for name in modules:
            __import__(name)
    import serializer

    _serializer_dir = os.path.dirname(serializer.__file__) + os.sep
    trusted = set()
    for path in seed_files():
        skeleton = skeleton_of(path.read_bytes())
        if skeleton is not None:
            trusted.add(_hash(skeleton))
    _trusted = frozenset(trusted)


# ---------------------------------------------------------------------------- mutation

_INTERESTING = (
    0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 255, 256, 1023, 1024,
    4095, 4096, 65535, 65536, (1 << 24) - 1, 1 << 24, (1 << 24) + 1, (1 << 31) - 1, 1 << 31,
    (1 << 32) - 1, 1 << 32, 1 << 48, 1 << 53, 1 << 61, 1 << 62, (1 << 63) - 1, 1 << 63,
    _MASK64, _MASK64 - 1,
)  # fmt: skip
_TORCH_KEYS = ("data.pkl", "data/0", "data/1", "data/9", "byteorder", ".format_version",
               ".storage_alignment", "version", "")  # fmt: skip


def _random_bytes_mutate(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """A few random byte edits (the mutator used where atheris is not installed)."""
    b = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[min(pos, len(b) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and b:
            del b[pos : pos + rng.randrange(1, 17)]
        elif op == 4 and len(b) >= 8:
            at = rng.randrange(len(b) - 7)
            b[at : at + 8] = _U64.pack(rng.choice(_INTERESTING))
        elif op == 5 and len(b) >= 4:
            at = rng.randrange(len(b) - 3)
            b[at : at + 4] = _U32.pack(rng.choice(_INTERESTING) & 0xFFFFFFFF)
        elif op == 6 and b:
            start = rng.randrange(len(b))
            chunk = b[start : start + rng.randrange(1, 33)]
            b[pos:pos] = chunk
    return bytes(b[:max_size])


class Mutator:
    """Structure-aware mutation of streams (see the module docstring). `byte_mutate(data,
    max_size, rng)` mutates plain bytes: atheris' (libFuzzer's) mutator, or a random one."""

    def __init__(
        self,
        target: str,
        seeds: Iterable[bytes],
        byte_mutate: Callable[[bytes, int, random.Random], bytes],
    ) -> None:
        self.byte_mutate = byte_mutate
        self.fixed_skeleton = target == "load_unsafe"
        self.seeds = list(seeds)
        self.ours = [x for x in (split(s) for s in self.seeds) if x is not None]
        self.theirs = [x for x in (torch_split(s) for s in self.seeds) if x is not None]
        self.rng = random.Random()

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = self.rng
        rng.seed(seed)
        try:
            out = self._mutate(data, max_size, rng)
        except Exception:  # a mutation that does not apply to this input: a plain one
            out = self.byte_mutate(data, max_size, rng)
        return out[:max_size]

    def _part(self, data: bytes, rng: random.Random, max_size: int) -> bytes:
        return self.byte_mutate(data, min(max_size, 2 * len(data) + 64), rng)

    def _mutate(self, data: bytes, max_size: int, rng: random.Random) -> bytes:
        r = rng.random()
        if r < 0.1:
            return self.byte_mutate(data, max_size, rng)  # checksums left as they are
        if r < 0.25:
            return reseal(self.byte_mutate(data, max_size, rng))
        if r < 0.27 and self.seeds:
            return rng.choice(self.seeds)  # start over
        layout = split(data)
        if layout is not None:
            out = self._ours(layout, rng, max_size)
        else:
            theirs = torch_split(data)
            if theirs is None:
                return reseal(self.byte_mutate(data, max_size, rng))
            out = self._torch(theirs, rng, max_size)
        r = rng.random()
        if r < 0.03:
            out = out[: rng.randrange(len(out) + 1)]  # truncated
        elif r < 0.05:
            out += self.byte_mutate(out[-40:], 64, rng)  # bytes after the stream
        return out

    # Our format: one part or field changed, then put together with valid checksums.
    def _ours(self, lay: Layout, rng: random.Random, max_size: int) -> bytes:
        ops = [
            (self._tensor_field, 6), (self._tensor_entries, 2), (self._tensor_bytes, 2),
            (self._storage_field, 4), (self._storage_entries, 1), (self._record, 2),
            (self._skeleton, 0 if self.fixed_skeleton else 6), (self._swap, 2),
            (self._preamble_field, 1),
        ]  # fmt: skip
        op = rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
        for _ in range(1 + (rng.random() < 0.3)):
            op(lay, rng, max_size)
        return lay.assemble()

    def _skeleton(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        lay.skeleton = self._part(lay.skeleton, rng, max_size)

    def _swap(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        """A part of another seed: tables and skeleton that do not belong together."""
        other = rng.choice(self.ours)
        which = rng.randrange(3)
        if which == 0:
            lay.skeleton = other.skeleton
        elif which == 1:
            lay.tensors, lay.tensor_count = other.tensors, other.tensor_count
        else:
            lay.storages, lay.records = list(other.storages), list(other.records)

    def _tensor_bytes(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        lay.tensors = self._part(lay.tensors, rng, max_size)
        if rng.random() < 0.5:
            lay.tensor_count = len(_tensor_entries(lay.tensors))

    def _tensor_entries(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        entries = _tensor_entries(lay.tensors)
        if entries and rng.random() < 0.5:
            del entries[rng.randrange(len(entries))]
        elif entries:
            entries.insert(rng.randrange(len(entries) + 1), rng.choice(entries))
        else:
            entries.append(bytearray(forge.tensor_entry(storage=0, dtype_id=9)))
        lay.tensors = b"".join(entries)
        lay.tensor_count = len(entries) + (rng.random() < 0.1) * rng.choice((-1, 1))

    def _tensor_field(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        entries = _tensor_entries(lay.tensors)
        if not entries:
            return self._tensor_entries(lay, rng, max_size)
        i = rng.randrange(len(entries))
        e = entries[i]
        if len(e) < 20:
            return None
        ndim = _U32.unpack_from(e, 16)[0]
        if 20 + 16 * ndim != len(e):
            return None
        field = rng.randrange(8)
        if field == 0:  # storage index
            _U32.pack_into(e, 0, rng.choice((rng.randrange(len(lay.storages) + 2),
                                             rng.choice(_INTERESTING) & 0xFFFFFFFF)))  # fmt: skip
        elif field == 1:  # dtype id
            struct.pack_into("<H", e, 4, rng.randrange(30))
        elif field == 2:  # kind, flags
            e[6 + rng.randrange(2)] = rng.choice((0, 1, 2, 0x80, 0xFF))
        elif field == 3:  # storage offset
            _U64.pack_into(e, 8, self._number(_U64.unpack_from(e, 8)[0], rng))
        elif field == 4:  # ndim: dims dropped, or added with interesting sizes
            new = rng.choice((0, 1, 2, 3, 4, ndim - 1, ndim + 1, 63, 64, 65))
            new = max(new, 0)
            sizes = list(struct.unpack_from(f"<{ndim}Q", e, 20))
            strides = list(struct.unpack_from(f"<{ndim}Q", e, 20 + 8 * ndim))
            while len(sizes) < new:
                sizes.append(rng.choice((0, 1, 2, 3, rng.choice(_INTERESTING))))
                strides.append(rng.choice((0, 1, 2, rng.choice(_INTERESTING))))
            sizes, strides = sizes[:new], strides[:new]
            if rng.random() < 0.1:
                new = rng.choice((new + 1, (1 << 32) - 1, 1 << 31))  # a lying ndim
            e[:] = e[:16] + _U32.pack(new) + struct.pack(f"<{2 * len(sizes)}Q", *sizes, *strides)
        elif ndim:  # one size or stride
            at = 20 + 8 * rng.randrange(2 * ndim)
            _U64.pack_into(e, at, self._number(_U64.unpack_from(e, at)[0], rng))
        lay.tensors = b"".join(entries)
        return None

    def _number(self, value: int, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.5:
            return rng.choice(_INTERESTING)
        if r < 0.8:
            return (value + rng.choice((-2, -1, 1, 2, 8, -8))) & _MASK64
        return (value * rng.choice((2, 3, 1 << 8, 1 << 32))) & _MASK64

    def _storage_field(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        if not lay.storages:
            return self._storage_entries(lay, rng, max_size)
        i = rng.randrange(len(lay.storages))
        e = bytearray(lay.storages[i])
        field = rng.randrange(5)
        if field == 0:  # nbytes, with the payload resized to match most of the time
            n = self._number(_U64.unpack_from(e, 0)[0], rng)
            _U64.pack_into(e, 0, n)
            if rng.random() < 0.7 and n <= max_size:
                payload = lay.records[i][:n]
                pad = bytes(rng.randrange(256) for _ in range(n - len(payload)))
                lay.records[i] = payload + pad
        elif field == 1:
            struct.pack_into("<H", e, 8, rng.randrange(30))
        elif field == 2:
            e[10] = rng.choice((0, 1, 2, 0xFF))
        elif field == 3:
            e[11] = rng.choice((0, 1, 0xFF))
        else:
            struct.pack_into("<i", e, 12, rng.choice((-2, -1, 0, 1, 7, -(1 << 31), (1 << 31) - 1)))
        lay.storages[i] = bytes(e)
        return None

    def _storage_entries(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        if lay.storages and rng.random() < 0.5:
            i = rng.randrange(len(lay.storages))
            del lay.storages[i], lay.records[i]
        elif lay.storages:
            i = rng.randrange(len(lay.storages))
            j = rng.randrange(len(lay.storages) + 1)
            lay.storages.insert(j, lay.storages[i])
            lay.records.insert(j, lay.records[i])
        else:
            lay.storages.append(forge.storage_entry(4, 9))
            lay.records.append(bytes(4))

    def _record(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        if not lay.records:
            return None
        i = rng.randrange(len(lay.records))
        payload = self._part(lay.records[i], rng, max_size)
        if len(payload) != len(lay.records[i]) and rng.random() < 0.5:
            payload = (payload + bytes(len(lay.records[i])))[: len(lay.records[i])]
        lay.records[i] = payload
        e = bytearray(lay.storages[i])
        _U64.pack_into(e, 0, len(payload))
        lay.storages[i] = bytes(e)
        return None

    def _preamble_field(self, lay: Layout, rng: random.Random, max_size: int) -> None:
        field = rng.randrange(4)
        if field == 0:
            lay.major = rng.choice((0, 1, 2, 0xFFFF))
        elif field == 1:
            lay.minor = rng.choice((0, 1, 0xFFFF))
        elif field == 2:
            lay.flags = rng.choice((0, 1, 2, 3, 1 << 31))
        else:
            lay.tensor_count = rng.choice(
                (lay.tensor_count + 1, max(lay.tensor_count - 1, 0), 0, 1 << 24, (1 << 24) + 1)
            )

    # Torch's format: one entry or record changed.
    def _torch(self, lay: TorchLayout, rng: random.Random, max_size: int) -> bytes:
        n = len(lay.entries)
        op = rng.randrange(9)
        pickles = [i for i, (k, _, _) in enumerate(lay.entries) if k == "data.pkl"]
        if op <= 2 and pickles and not self.fixed_skeleton:
            i = pickles[-1]
            payload = self._part(lay.records[i], rng, max_size)
            lay.records[i] = payload
            lay.entries[i] = (lay.entries[i][0], lay.entries[i][1], len(payload))
        elif op == 3 and pickles and self.theirs:
            other = rng.choice(self.theirs).record("data.pkl")
            if other is not None:
                i = pickles[-1]
                lay.records[i] = other
                lay.entries[i] = (lay.entries[i][0], lay.entries[i][1], len(other))
        elif op == 4 and n:  # a record's bytes, its length following
            i = rng.randrange(n)
            if lay.entries[i][0] != "data.pkl" or not self.fixed_skeleton:
                payload = self._part(lay.records[i], rng, max_size)
                lay.records[i] = payload
                lay.entries[i] = (lay.entries[i][0], lay.entries[i][1], len(payload))
        elif op == 5 and n:  # a length that lies
            i = rng.randrange(n)
            k, s, length = lay.entries[i]
            new = rng.choice((length + 1, length - 1, 0, rng.choice(_INTERESTING) >> 1, -1))
            lay.entries[i] = (k, s, new)
        elif op == 6 and n:
            i = rng.randrange(n)
            k, s, length = lay.entries[i]
            lay.entries[i] = (k, not s, length)
        elif op == 7 and n:
            i = rng.randrange(n)
            k, s, length = lay.entries[i]
            lay.entries[i] = (rng.choice(_TORCH_KEYS + tuple(e[0] for e in lay.entries)), s, length)
        elif n:
            i = rng.randrange(n)
            if rng.random() < 0.5 and lay.entries[i][0] != "data.pkl":
                del lay.entries[i], lay.records[i]
            else:
                j = rng.randrange(n + 1)
                lay.entries.insert(j, lay.entries[i])
                lay.records.insert(j, lay.records[i])
        return lay.assemble()


def _tensor_entries(table: bytes) -> list[bytearray]:
    """The tensor table cut into entries (a malformed rest is kept as one last piece)."""
    entries = []
    pos = 0
    while pos < len(table):
        if pos + 20 > len(table):
            entries.append(bytearray(table[pos:]))
            break
        ndim = _U32.unpack_from(table, pos + 16)[0]
        n = 20 + 16 * ndim
        if ndim > 64 or pos + n > len(table):
            entries.append(bytearray(table[pos:]))
            break
        entries.append(bytearray(table[pos : pos + n]))
        pos += n
    return entries


def _dictionary() -> str:
    """libFuzzer dictionary: magics, pickle opcodes and names, torch record names."""
    tokens: list[bytes] = [
        forge.MAGIC, forge.END_MAGIC, b"\x80\x02", b"\x80\x04\x95", b"\x80\x05\x95", b"Q",
        b"R", b"b", b"s", b"u", b"e", b"(", b"t", b")", b"}", b"]", b"\x85", b"\x86",
        b"\x87", b"\x8f", b"\x90", b"\x91", b"\x93", b"\x94", b"\x81", b"\x92", b"q\x00",
        b"h\x00", b"r\xff\xff\xff\x07", b"j\x00\x00\x00\x00", b"0", b"1", b"2", b".",
        b"K\x00", b"J\xff\xff\xff\xff", b"\x8a\x08", b"X\x00\x00\x00\x00", b"\x8c\x01a",
        b"\x8c\x01n", b"data.pkl", b"data/0", b"byteorder", b"little", b"big",
        b".format_version", b".storage_alignment", b"storage", b"cpu", b"cuda", b"cuda:0",
        b"key", b"is_storage", b"length", b"version", b"mesh", b"placements", b"shape",
        b"stride", b"requires_grad", b"parameter", b"rank", b"world_size", b"coordinate",
        b"shard_order", b"strided_shard_as_shard_order", b"device_type", b"ranks",
        b"dim_names", b"root_ranks", b"root_dim_names", b"slice", b"replicate", b"shard",
        b"strided_shard", b"partial", b"sum",
    ]  # fmt: skip
    for module, name in (
        ("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "frozenset"),
        ("__builtin__", "bytes"), ("builtins", "bytearray"), ("_codecs", "encode"),
        ("torch", "Size"), ("torch", "device"), ("torch", "float32"), ("torch", "bits16"),
        ("serializer.backends.distributed", "_rebuild_dtensor"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("torch", "FloatStorage"), ("torch.serialization", "_get_layout"),
        ("torch.distributed._serialization", "_Entry"), ("builtins", "getattr"),
        ("os", "system"), ("copyreg", "_reconstructor"), ("__builtin__", "object"),
    ):  # fmt: skip
        tokens.append(b"c" + module.encode() + b"\n" + name.encode() + b"\n")
        tokens.append(b"\x8c" + bytes([len(module)]) + module.encode())
        tokens.append(b"\x8c" + bytes([len(name)]) + name.encode())
    for value in _INTERESTING:
        tokens.append(_U64.pack(value))
    lines = []
    for i, token in enumerate(tokens):
        escaped = "".join(
            chr(c) if 0x20 <= c < 0x7F and c not in (0x22, 0x5C) else f"\\x{c:02x}" for c in token
        )
        lines.append(f'kw{i}="{escaped}"')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the worker


class _State:
    """The file a worker shares with its supervisor: executions so far, and the input being
    run (so that one that kills the process with no artifact is still known)."""

    def __init__(self, path: Path, max_len: int) -> None:
        self.size = _STATE_HEAD + max_len
        with open(path, "r+b") as f:
            self.map = mmap.mmap(f.fileno(), self.size)
        self.count = _U64.unpack_from(self.map, 0)[0]

    @staticmethod
    def create(path: Path, max_len: int) -> None:
        with open(path, "wb") as f:
            f.truncate(_STATE_HEAD + max_len)

    @staticmethod
    def read(path: Path) -> tuple[int, bytes]:
        raw = path.read_bytes()
        n = _U32.unpack_from(raw, 8)[0]
        return _U64.unpack_from(raw, 0)[0], raw[_STATE_HEAD : _STATE_HEAD + n]

    def start(self, data: bytes) -> None:
        n = min(len(data), self.size - _STATE_HEAD)
        self.count += 1
        self.map[_STATE_HEAD : _STATE_HEAD + n] = data[:n]
        _U32.pack_into(self.map, 8, n)
        _U64.pack_into(self.map, 0, self.count)


def _worker(args: argparse.Namespace) -> int:
    target = args.worker
    workdir = Path(args.workdir)
    engine = args.engine
    prepare(instrument=engine == "atheris")
    state = _State(Path(args.state), args.max_len)
    known = set()
    if args.known and os.path.exists(args.known):
        known = {line.strip() for line in open(args.known) if line.strip()}
    seeds = [p.read_bytes() for p in seed_files(target)]

    peak = [_peak_mb()]

    def one(data: bytes) -> None:
        state.start(data)
        before = _rss_mb()
        try:
            check(target, data)
        except Finding as f:
            if f.signature in known:
                return
            print(f"FINDING {f.signature}", file=sys.stderr, flush=True)
            raise
        # An input that raised the process's peak RSS by more than the limit above what the
        # process held when it began. (A slow growth over many inputs is left to libFuzzer's
        # RSS limit, at 3 times this one, whose thread blames whichever input runs when it
        # looks: the supervisor then replays that input, and says if it does not reproduce.)
        now = _peak_mb()
        if now > peak[0]:
            peak[0] = now
            if now - before > args.rss_mb:
                message = f"peak RSS {now} MB, {now - before} MB over the {before} MB it began at"
                finding = Finding("memory", message)
                finding.target = target
                print(f"FINDING {finding.signature}", file=sys.stderr, flush=True)
                raise finding

    corpus = workdir / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    if engine == "atheris":
        import atheris

        mutator = Mutator(target, seeds, lambda b, n, rng: atheris.Mutate(b, n))
        dictionary = workdir / "fuzz.dict"
        dictionary.write_text(_dictionary())
        seed_dirs = [str(OUR_SEEDS)] + ([str(TORCH_SEEDS)] if target in TORCH_TARGETS else [])
        argv = [
            sys.argv[0], str(corpus), *seed_dirs,
            f"-max_total_time={args.seconds}", f"-timeout={args.timeout}",
            f"-rss_limit_mb={3 * args.rss_mb}", f"-max_len={args.max_len}", "-len_control=0",
            "-report_slow_units=100000",
            f"-artifact_prefix={artifacts}/{target}-", f"-dict={dictionary}",
            "-print_final_stats=1", "-reload=0", *([f"-seed={args.seed}"] if args.seed else []),
        ]  # fmt: skip
        atheris.Setup(argv, one, custom_mutator=mutator)
        atheris.Fuzz()
        return 0
    return _random_engine(target, one, seeds, corpus, artifacts, args)


def _random_engine(
    target: str,
    one: Callable[[bytes], None],
    seeds: list[bytes],
    corpus: Path,
    artifacts: Path,
    args: argparse.Namespace,
) -> int:
    """No coverage feedback: mutated seeds (and what an earlier run saved) until time is up.
    A finding is written as a libFuzzer-style artifact; a hang ends the process through
    faulthandler's watchdog, and the supervisor takes the input from the state file."""
    import faulthandler

    rng = random.Random(args.seed or None)
    mutator = Mutator(target, seeds, lambda b, n, r: _random_bytes_mutate(b, n, r))
    inputs = seeds + [p.read_bytes() for p in sorted(corpus.iterdir())]
    deadline = time.monotonic() + args.seconds
    pending = list(inputs)
    while time.monotonic() < deadline:
        if pending:
            data = pending.pop()
        else:
            data = mutator(rng.choice(inputs), args.max_len, rng.getrandbits(32))
        faulthandler.dump_traceback_later(args.timeout, exit=True)
        try:
            one(data)
        except Finding:
            faulthandler.cancel_dump_traceback_later()
            name = artifacts / f"{target}-crash-{hashlib.sha1(data).hexdigest()}"
            name.write_bytes(data)
            traceback.print_exc()
            print(f"artifact_prefix; Test unit written to {name}", file=sys.stderr)
            return 1
        faulthandler.cancel_dump_traceback_later()
    print(f"Done {_State.read(Path(args.state))[0]} runs", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- replay


def _peak_mb() -> int:
    """This process's peak resident memory, in MB: VmHWM, which starts afresh at exec
    (ru_maxrss does not: a child exec'd from a large parent starts at the parent's peak)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) >> 10
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10


def _rss_mb() -> int:
    """The resident memory of this process now, in MB."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def _limits(as_mb: int) -> Callable[[], None]:
    def apply() -> None:
        limit = as_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONHASHSEED="0",  # set orders, hence failures, the same in every run
        OMP_NUM_THREADS="1",
        # Keep glibc from returning memory to the kernel after every input: the readers'
        # per-call staging buffers (1 MiB, 8 MiB) would otherwise page-fault in on each one.
        MALLOC_MMAP_THRESHOLD_="33554432",
        MALLOC_TRIM_THRESHOLD_="268435456",
        MALLOC_TOP_PAD_="67108864",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
    )
    return env


def _replay_child(cases_file: str, rss_mb: int) -> int:
    """Runs cases (path, target) in order: 'start i' before each, 'done i {json}' after."""
    prepare()
    cases = json.loads(Path(cases_file).read_text())
    for i, (path, target) in enumerate(cases):
        print(f"start {i}", flush=True)
        data = Path(path).read_bytes()
        before = _rss_mb()
        try:
            outcome = {"result": "ok", "outcome": check(target, data)}
        except Finding as f:
            outcome = {
                "result": "finding",
                "signature": f.signature,
                "message": str(f)[:2000],
                "traceback": "".join(traceback.format_exception(f))[-6000:],
            }
        peak = _peak_mb()
        if peak - before > rss_mb:
            outcome = {"result": "memory", "peak_rss_mb": peak, "began_mb": before, "was": outcome}
        print(f"done {i} {json.dumps(outcome)}", flush=True)
        if peak - before > rss_mb:
            return 0  # the next case starts in a fresh process
    return 0


def replay(
    cases: list[tuple[str, str]],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    rss_mb: int = DEFAULT_RSS_MB,
    as_mb: int = DEFAULT_AS_MB,
) -> list[dict[str, Any]]:
    """Each (file, target) in a child process with time and memory limits; one child runs
    cases in turn and is replaced after a crash, a hang or a memory blow-up. Returns one dict
    per case: result "ok" (and how it ended), "finding", "hang", "crash" or "memory"."""
    results: list[dict[str, Any] | None] = [None] * len(cases)
    first = 0
    startup = 120.0  # importing torch on a loaded machine
    with tempfile.TemporaryDirectory(prefix="fuzz-replay-") as tmp:
        while first < len(cases):
            batch = cases[first:]
            cases_file = os.path.join(tmp, "cases.json")
            Path(cases_file).write_text(json.dumps(batch))
            stderr = open(os.path.join(tmp, "stderr"), "w+")
            proc = subprocess.Popen(
                [sys.executable, "-m", "tools.fuzz", "--replay-child", cases_file,
                 "--rss-mb", str(rss_mb)],
                cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=stderr,
                preexec_fn=_limits(as_mb), text=True,
            )  # fmt: skip
            assert proc.stdout is not None
            current, deadline = None, time.monotonic() + startup
            buffered = ""
            while True:
                wait = deadline - time.monotonic()
                ready = select.select([proc.stdout], [], [], max(wait, 0))[0] if wait > 0 else []
                if not ready:  # the current case (or the start) ran past its time
                    proc.kill()
                    proc.wait()
                    index = 0 if current is None else current
                    results[first + index] = {"result": "hang", "seconds": timeout}
                    first += index + 1
                    break
                chunk = os.read(proc.stdout.fileno(), 65536).decode()
                if not chunk:  # the child exited
                    proc.wait()
                    if current is not None and results[first + current] is None:
                        stderr.seek(0)
                        results[first + current] = {
                            "result": "crash",
                            "returncode": proc.returncode,
                            "stderr": stderr.read()[-3000:],
                        }
                        first += current + 1
                    elif current is None:
                        stderr.seek(0)
                        raise RuntimeError(f"replay child failed to start:\n{stderr.read()}")
                    else:
                        first += current + 1
                    break
                buffered += chunk
                while "\n" in buffered:
                    line, buffered = buffered.split("\n", 1)
                    word, _, rest = line.partition(" ")
                    if word == "start":
                        current = int(rest)
                        deadline = time.monotonic() + timeout
                    elif word == "done":
                        index, _, payload = rest.partition(" ")
                        results[first + int(index)] = json.loads(payload)
            stderr.close()
    return [r if r is not None else {"result": "crash", "returncode": None} for r in results]


def manifest() -> dict[str, dict[str, Any]]:
    """tools/fuzz_corpus/findings/manifest.json: file name -> what it reproduces."""
    if not MANIFEST.exists():
        return {}
    data: dict[str, dict[str, Any]] = json.loads(MANIFEST.read_text())
    return data


def finding_files() -> list[Path]:
    if not FINDINGS.is_dir():
        return []
    return sorted(p for p in FINDINGS.iterdir() if p.is_file() and p.name != MANIFEST.name)


# ---------------------------------------------------------------------------- supervisor

_STATS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclasses.dataclass
class TargetStats:
    executions: int = 0
    seconds: float = 0.0
    restarts: int = 0
    coverage: int = 0
    features: int = 0
    corpus: int = 0


def _run_worker(
    target: str, seconds: int, args: argparse.Namespace, workdir: Path, known: Path
) -> tuple[int, float, str, list[Path], bytes]:
    """One fuzzing process; returns executions, wall seconds, log text, the artifacts it
    wrote, and the input it was running when it stopped."""
    state = workdir / f"state-{target}"
    _State.create(state, args.max_len)
    log_path = workdir / "logs" / f"{target}-{int(time.time())}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "tools.fuzz", "--worker", target, "--workdir", str(workdir),
        "--state", str(state), "--known", str(known), "--engine", args.engine,
        "--seconds", str(seconds), "--timeout", str(args.timeout), "--rss-mb", str(args.rss_mb),
        "--max-len", str(args.max_len), *(["--seed", str(args.seed)] if args.seed else []),
    ]  # fmt: skip
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_child_env(), stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_limits(args.as_mb),
        )  # fmt: skip
        try:
            proc.wait(timeout=seconds + args.timeout + 180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            with open(log_path, "a") as f:
                f.write("\nSUPERVISOR: killed the fuzzing process (ran past its time)\n")
    elapsed = time.monotonic() - start
    count, current = _State.read(state)
    text = log_path.read_text(errors="replace")
    written = [
        Path(p) for p in _ARTIFACT.findall(text) if os.path.exists(p) and "slow-unit" not in p
    ]
    if "FINDING " in text and not written:
        # The harness raised a finding but the process died before libFuzzer wrote it
        # down (seen once): the input the state file holds is the one.
        path = workdir / "artifacts" / f"{target}-crash-{hashlib.sha1(current).hexdigest()}"
        path.write_bytes(current)
        written = [path]
    elif proc.returncode != 0 and "FINDING " not in text:
        # Not an input's finding raised by the harness (whose artifact libFuzzer wrote right):
        # a timeout, a signal, or libFuzzer's RSS check (which blames whatever input is
        # running when it looks, often none). The input the state file holds is the one.
        kind = "killed" if proc.returncode and proc.returncode < 0 else "stopped"
        if "Timeout (" in text or "libFuzzer: timeout" in text:
            kind = "timeout"
        elif "out-of-memory" in text:
            kind = "oom"
        elif "deadly signal" in text:
            kind = "crash"
        path = workdir / "artifacts" / f"{target}-{kind}-{hashlib.sha1(current).hexdigest()}"
        path.write_bytes(current)
        written = [path]
        with open(log_path, "a") as f:
            f.write(f"\nSUPERVISOR: exit {proc.returncode}; input saved to {path}\n")
    return count, elapsed, text, written, current


def _finding_record(path: Path, target: str, text: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a fresh process makes of an artifact (its replay decides, not the fuzzer's log)."""
    kind = path.name.removeprefix(f"{target}-").split("-")[0]
    (result,) = replay([(str(path), target)], timeout=args.timeout, rss_mb=args.rss_mb,
                       as_mb=args.as_mb)  # fmt: skip
    signature = result.get("signature") or f"{target}:{result['result']}"
    if result["result"] == "ok":
        signature = f"{target}:unreproduced-{kind}"
    return {
        "file": str(path),
        "target": target,
        "fuzzer_kind": kind,
        "replay": result,
        "signature": signature,
        "sha1": hashlib.sha1(path.read_bytes()).hexdigest(),
        "log_tail": text[-4000:],
    }


def campaign(args: argparse.Namespace) -> dict[str, Any]:
    targets = list(TARGETS) if args.target == "all" else args.target.split(",")
    for target in targets:
        if target not in TARGETS:
            raise SystemExit(f"unknown target {target!r}; targets: {', '.join(TARGETS)}")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "findings").mkdir(exist_ok=True)
    known = workdir / "known-signatures"
    signatures = {s for entry in manifest().values() for s in entry.get("signatures", [])}
    if known.exists():
        signatures |= {line.strip() for line in known.read_text().splitlines() if line.strip()}
    known.write_text("".join(f"{s}\n" for s in sorted(signatures)))
    stats = {t: TargetStats() for t in targets}
    findings: list[dict[str, Any]] = []
    start = time.monotonic()
    slice_s = args.seconds
    if len(targets) > 1:
        slice_s = max(10, min(args.slice, args.seconds // len(targets)))
    turn = 0
    repeats: dict[str, int] = {}
    while args.seconds - (time.monotonic() - start) >= 5:
        live = [t for t in targets if repeats.get(t, 0) <= args.max_restarts]
        if not live:
            break
        target = live[turn % len(live)]
        turn += 1
        turn_end = min(time.monotonic() + slice_s, start + args.seconds)
        while turn_end - time.monotonic() >= 5 and repeats.get(target, 0) <= args.max_restarts:
            seconds = int(turn_end - time.monotonic())
            count, elapsed, text, written, _ = _run_worker(target, seconds, args, workdir, known)
            s = stats[target]
            s.executions += count
            s.seconds += elapsed
            lines = _STATS.findall(text)
            if lines:
                _, cov, ft, corp = lines[-1]
                s.coverage, s.features, s.corpus = int(cov), int(ft), int(corp)
            print(
                f"fuzz: {target}: {count} executions in {elapsed:.0f} s "
                f"({count / max(elapsed, 1e-9):.0f}/s), cov {s.coverage} ft {s.features}",
                flush=True,
            )
            if not written:
                break
            for path in written:  # then the rest of the turn, past this finding
                s.restarts += 1
                repeats[target] = repeats.get(target, 0) + 1
                record = _finding_record(path, target, text, args)
                saved = workdir / "findings" / path.name
                shutil.copyfile(path, saved)
                record["file"] = str(saved)
                findings.append(record)
                print(f"fuzz: {target}: finding {record['signature']} -> {saved}", flush=True)
                if record["signature"] not in signatures:
                    signatures.add(record["signature"])
                    with open(known, "a") as f:
                        f.write(record["signature"] + "\n")
                if args.save_findings:
                    _save_finding(saved, record)
    wall = time.monotonic() - start
    total = sum(s.executions for s in stats.values())
    summary = {
        "engine": args.engine,
        "atheris": _atheris_version(),
        "torch": _torch_version(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(wall, 1),
        "executions": total,
        "execs_per_second": round(total / max(wall, 1e-9), 1),
        "targets": {t: dataclasses.asdict(s) for t, s in stats.items()},
        "findings": findings,
        "new_signatures": sorted({f["signature"] for f in findings}),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"fuzz: {total} executions in {wall:.0f} s ({summary['execs_per_second']}/s), "
        f"{len(findings)} findings; summary in {workdir / 'summary.json'}",
        flush=True,
    )
    return summary


def _save_finding(path: Path, record: dict[str, Any]) -> None:
    """Add a reproducer to tools/fuzz_corpus/findings/ (status open) and its manifest."""
    FINDINGS.mkdir(parents=True, exist_ok=True)
    name = f"{record['target']}-{record['sha1'][:16]}.bin"
    shutil.copyfile(path, FINDINGS / name)
    entries = manifest()
    entries[name] = {
        "status": "open",
        "targets": [record["target"]],
        "signatures": [record["signature"]],
        "summary": str(record["replay"].get("message", record["replay"]["result"]))[:300],
        "found": datetime.date.today().isoformat(),
    }
    MANIFEST.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")


def _atheris_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("atheris")
    except Exception:
        return None


def _torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return "?"


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time in all")
    parser.add_argument("--target", default="all", help=f"all, or some of {','.join(TARGETS)}")
    parser.add_argument("--workdir", default=str(ROOT / "build" / "fuzz"))
    parser.add_argument("--engine", choices=("atheris", "random"), default=None)
    parser.add_argument("--slice", type=int, default=600, help="seconds per target turn")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="per input")
    parser.add_argument("--rss-mb", type=int, default=DEFAULT_RSS_MB)
    parser.add_argument("--as-mb", type=int, default=DEFAULT_AS_MB)
    parser.add_argument("--max-len", type=int, default=MAX_LEN)
    parser.add_argument("--max-restarts", type=int, default=20, help="findings per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-findings", action="store_true",
                        help="add new findings to tools/fuzz_corpus/findings/")  # fmt: skip
    parser.add_argument("--replay", nargs="+", metavar="FILE")
    parser.add_argument("--make-seeds", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--known", help=argparse.SUPPRESS)
    parser.add_argument("--replay-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine is None:
        args.engine = "atheris" if _atheris_version() else "random"
    if args.replay_child:
        return _replay_child(args.replay_child, args.rss_mb)
    if args.worker:
        return _worker(args)
    if args.make_seeds:
        write_seeds()
        return 0
    if args.replay:
        targets = list(TARGETS) if args.target == "all" else args.target.split(",")
        cases = [(str(Path(p).resolve()), t) for p in args.replay for t in targets]
        bad = 0
        for (path, target), result in zip(cases, replay(cases, timeout=args.timeout,
                                                          rss_mb=args.rss_mb, as_mb=args.as_mb),
                                          strict=True):  # fmt: skip
            ok = result["result"] == "ok"
            bad += not ok
            detail = result.get("outcome") or result.get("message") or result
            print(f"{'ok ' if ok else 'BAD'} {target:12} {path}: {detail}")
            if not ok and result.get("traceback"):
                print(result["traceback"])
        return 1 if bad else 0
    summary = campaign(args)
    return 1 if summary["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
