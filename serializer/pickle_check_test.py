"""The opcode check that runs before a weights_only skeleton is unpickled (`_pickle_check`):
every refusal it makes, on real streams through `serializer.load`, and what it lets through."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import serializer
from serializer import _pickle_check
from testing import forge


def _one_tensor_stream(skeleton: bytes) -> bytes:
    """A stream of one float32 storage of 2 elements and one tensor entry, around `skeleton`."""
    return forge.stream(
        [(forge.storage_entry(8, forge.dtype_id("float32")), bytes(8))],
        [forge.tensor_entry(storage=0, dtype_id=forge.dtype_id("float32"))],
        skeleton,
    )


def _load(skeleton: bytes, **kwargs: object) -> object:
    return serializer.load(io.BytesIO(_one_tensor_stream(skeleton)), **kwargs)


class Cfg:
    def __init__(self) -> None:
        pass


class R:
    """Pickles as the call ``f(*a)`` (the issue's reproducer)."""

    def __init__(self, f: object, a: tuple[object, ...]) -> None:
        self.f, self.a = f, a

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.f, self.a)

    def __call__(self, *a: object) -> None:  # pickle wants the reduction's first item callable
        pass


def test_what_an_allowed_function_returns_cannot_be_called() -> None:
    """getattr allowed (as torch's docs suggest for nested classes) plus any class: the
    stream walks Cfg.__init__.__globals__ to os.getpid. torch.load refuses; so must we."""
    g = R(getattr, (R(getattr, (Cfg, "__init__")), "__globals__"))
    x = R(R(getattr, (R(R(getattr, (g, "get")), ("os",)), "getpid")), ())
    buf = io.BytesIO()
    serializer.save({"x": x}, buf)
    buf.seek(0)
    with (
        serializer.safe_globals([getattr, Cfg]),
        pytest.raises(
            serializer.UnsafeGlobalError, match="Trying to call reduce for unrecognized function"
        ),
    ):
        serializer.load(buf)


def test_build_on_a_tensor_is_refused() -> None:
    """BUILD on a loaded tensor would call Tensor.__setstate__, whose set_ grows the storage
    into uninitialized memory; torch allows it, we refuse it."""
    state = (None, 0, (1 << 12,), (1,))  # legacy set_(storage, offset, size, stride)
    skeleton = (
        b"\x80\x02K\x00Q"  # the tensor of entry 0
        + pickle.dumps(state, 2)[2:-1]
        + b"b."  # BUILD, STOP
    )
    with pytest.raises(serializer.UnsafeGlobalError, match="build .*a tensor"):
        _load(skeleton)
    with pytest.raises(serializer.UnsafeGlobalError, match="build .*a tensor"):
        serializer.read_index(io.BytesIO(_one_tensor_stream(skeleton)))


@pytest.mark.parametrize(
    "op", [b"s", b"u", b"a", b"e"], ids=["SETITEM", "SETITEMS", "APPEND", "APPENDS"]
)
def test_item_assignment_on_a_tensor_is_refused(op: bytes) -> None:
    items = {b"s": b"K\x00K\x01", b"a": b"K\x01"}.get(op, b"(K\x00K\x01")
    with pytest.raises(serializer.UnsafeGlobalError, match="allowlisted types, but got a tensor"):
        _load(b"\x80\x02K\x00Q" + items + op + b".")


def test_memo_index_that_skips_ahead_is_refused_before_any_allocation() -> None:
    """One LONG_BINPUT 2**27 would grow the C unpickler's memo array to 2 GiB."""
    skeleton = b"\x80\x02N" + b"r" + (1 << 27).to_bytes(4, "little") + b"."
    with pytest.raises(serializer.FormatError, match="memo index 134217728 skips ahead"):
        _load(skeleton)
    with pytest.raises(serializer.FormatError, match="never written"):
        _load(b"\x80\x02h\x05.")


_SUBPROCESS_LOAD = textwrap.dedent(
    """
    import io, sys
    import serializer
    from testing import forge
    skeleton = bytes.fromhex(sys.argv[1])
    stream = forge.stream([], [], skeleton)
    try:
        serializer.load(io.BytesIO(stream))
    except serializer.SerializerError as e:
        print(type(e).__name__, e)
    """
)


def _load_in_child(skeleton: bytes) -> str:
    """Load in a child process, so that a regression hangs or exhausts memory there: killed
    after 120 s (a guard, not a timing) or at 4 GiB of address space."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
    done = subprocess.run(
        [sys.executable, "-c", limit + _SUBPROCESS_LOAD, skeleton.hex()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _shared_tuple_dag(depth: int) -> bytes:
    """A dict whose key is a tuple of 2**depth leaves made of `depth` shared pairs: a few
    hundred bytes whose hash (or repr) takes 2**depth steps."""
    out = bytearray(b"\x80\x02}K\x00q\x00")  # {}, then 0 memoized as entry 0
    for level in range(depth):
        out += b"h" + bytes([level]) + b"h" + bytes([level]) + b"\x86q" + bytes([level + 1])
    return bytes(out + b"K\x01s.")  # {pair: 1}


def test_shared_nested_tuples_are_refused_before_hashing() -> None:
    out = _load_in_child(_shared_tuple_dag(40))
    assert out.startswith("FormatError") and "expands to" in out


def test_deep_tuples_are_refused() -> None:
    skeleton = b"\x80\x02N" + b"\x85" * (_pickle_check.MAX_TUPLE_DEPTH + 5) + b"."
    with pytest.raises(serializer.FormatError, match="nest deeper"):
        _load(skeleton)


@pytest.mark.parametrize(
    "skeleton, message",
    [
        (b"\x80\x01N.", "pickle protocol 1"),
        (b"\x80\x02I1\n.", "opcode b'I' is not allowed"),  # protocol 0's text INT
        (b"\x80\x02(cbuiltins\nprint\n)o.", "opcode b'o' is not allowed"),  # OBJ
        (b"\x80\x02N", "ends before its STOP"),
        (b"\x80\x02X\xff\xff\x00\x00ab.", "runs past the skeleton"),
        (b"\x80\x02t.", "no MARK"),
    ],
)
def test_malformed_or_old_skeletons_are_format_errors(skeleton: bytes, message: str) -> None:
    with pytest.raises(serializer.FormatError, match=message):
        _load(skeleton)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_protocol_save_writes_passes(protocol: int) -> None:
    obj = {
        "t": torch.arange(3.0),
        "nested": [1, 2.5, "s", b"b", (1, 2, 3, 4, (5,)), {6}, frozenset({7}), None, True],
        "big": 10**40,
        "complex": 1 + 2j,
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "dtype": torch.bfloat16,
        "bytearray": bytearray(b"xyz"),
        "layout": torch.strided,
    }
    buf = io.BytesIO()
    serializer.save(obj, buf, pickle_protocol=protocol)
    buf.seek(0)
    loaded = serializer.load(buf)
    assert loaded.keys() == obj.keys()
    assert loaded["nested"] == obj["nested"] and loaded["bytearray"] == obj["bytearray"]
    assert loaded["layout"] is torch.strided and loaded["size"] == obj["size"]


@pytest.mark.parametrize("protocol", [0, 1])
def test_save_refuses_protocols_that_weights_only_loads_cannot_read(protocol: int) -> None:
    with pytest.raises(ValueError, match=f"pickle_protocol {protocol} is not supported"):
        serializer.save({"t": torch.ones(1)}, io.BytesIO(), pickle_protocol=protocol)
