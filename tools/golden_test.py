"""Golden streams written by every torch version load bit-exactly on the running torch.

The corpus is testing/golden/<torch release>/ (see tools/golden.py). Each stream is compared
with the same case rebuilt by the running torch. Streams whose dtypes the running torch lacks
are skipped, after checking that load refuses them with an error naming the dtype.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch

import serializer
from serializer import _format
from testing import forge
from testing.cases import assert_same
from tools import golden

DIRS = golden.version_dirs()
CASES = {c.name: c for c in golden.golden_cases()}
FINGERPRINT_CASES = {c.name: c for c in golden.fingerprint_cases()}
RUNNING = torch.__version__


def _streams() -> list[tuple[Path, str, dict[str, Any]]]:
    out = []
    for d in DIRS:
        for name, entry in golden.load_manifest(d)["cases"].items():
            out.append((d, name, entry))
    return out


STREAMS = _streams()
STREAM_IDS = [f"{d.name}/{name}" for d, name, _ in STREAMS]


def _data(d: Path, entry: dict[str, Any]) -> bytes:
    data = Path(d, entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], (
        f"{d.name}/{entry['file']} does not match its manifest's sha256 "
        "(corrupted, or changed by git's line-ending conversion?)"
    )
    return data


def _missing_dtypes(entry: dict[str, Any]) -> list[str]:
    return [n for n in entry["dtypes"] if not hasattr(torch, n)]


def test_corpus_present() -> None:
    assert DIRS, f"no golden streams under {golden.GOLDEN_DIR}: run python -m tools.golden"


@pytest.mark.parametrize("d,name,entry", STREAMS, ids=STREAM_IDS)
def test_golden_stream_loads_bit_exactly(d: Path, name: str, entry: dict[str, Any]) -> None:
    data = _data(d, entry)
    missing = _missing_dtypes(entry)
    if missing:
        # The documented behaviour: a clear refusal naming the dtype, then nothing to compare.
        with pytest.raises(serializer.FormatError, match=missing[0]):
            serializer.load(io.BytesIO(data), weights_only=entry["weights_only"])
        pytest.skip(
            f"torch {RUNNING} has no dtype {', '.join(missing)} "
            f"(stream written by torch {d.name}); checked that load refuses it"
        )
    buf = io.BytesIO(data + b"next")
    loaded = serializer.load(buf, weights_only=entry["weights_only"])
    assert buf.read() == b"next", "load must consume exactly the golden stream"
    case = CASES.get(name)
    if case is None:
        pytest.skip(f"the catalog of torch {RUNNING} has no case {name}: loaded, not compared")
    assert_same(loaded, case.build("cpu"))


@pytest.mark.parametrize("d", DIRS, ids=[d.name for d in DIRS])
def test_catalog_builds_the_same_bytes_as_when_written(d: Path) -> None:
    """The catalog's tensors (make_tensor's seeded randint) are the same on every torch."""
    recorded = golden.load_manifest(d)["fingerprints"]
    compared, differ = 0, []
    for name, fp in recorded.items():
        case = FINGERPRINT_CASES.get(name)
        if case is None:
            continue  # a dtype this torch lacks
        compared += 1
        if golden.fingerprint(case.build("cpu")) != fp:
            differ.append(name)
    assert not differ, (
        f"torch {RUNNING} builds different tensor data than torch {d.name} did for {differ}: "
        "make_tensor (or these cases) is not reproducible across versions"
    )
    assert compared > 0


@pytest.mark.parametrize("d", DIRS, ids=[d.name for d in DIRS])
def test_other_major_version_is_refused(d: Path) -> None:
    for entry in golden.load_manifest(d)["cases"].values():
        data = _data(d, entry)
        for major in (_format.MAJOR + 1, 0xFFFF, _format.MAJOR - 1):
            patched = forge.patch_preamble(data, major=major, minor=0)
            with pytest.raises(serializer.VersionError, match=f"format version {major}\\."):
                serializer.load(io.BytesIO(patched), weights_only=False)
            patched = forge.patch_preamble(data, major=major, minor=_format.MINOR)
            with pytest.raises(serializer.VersionError):
                serializer.read_index(io.BytesIO(patched), weights_only=False)


# Every older minor version of this major, and newer ones (a minor version only adds what
# older readers may ignore). With MINOR == 0 there is no older one yet besides the corpus
# itself once MINOR is raised.
MINORS = sorted({*range(_format.MINOR), _format.MINOR + 1, _format.MINOR + 7, 0xFFFF})


@pytest.mark.parametrize("d", DIRS, ids=[d.name for d in DIRS])
@pytest.mark.parametrize("minor", MINORS)
def test_other_minor_version_loads(d: Path, minor: int) -> None:
    loaded_any = False
    for name, entry in golden.load_manifest(d)["cases"].items():
        if _missing_dtypes(entry) or name not in CASES:
            continue
        data = forge.patch_preamble(_data(d, entry), major=_format.MAJOR, minor=minor)
        index = serializer.read_index(io.BytesIO(data), weights_only=entry["weights_only"])
        assert index.version == (_format.MAJOR, minor)
        assert index.nbytes == len(data)
        loaded = serializer.load(io.BytesIO(data), weights_only=entry["weights_only"])
        assert_same(loaded, CASES[name].build("cpu"))
        loaded_any = True
    assert loaded_any


def test_writer_reproduces_the_corpus_of_this_torch() -> None:
    """What save writes now is byte-identical to the committed corpus of this torch version:
    an unintended change of the wire format shows here. If the change is intended (and old
    streams still load, which the tests above check), regenerate: python -m tools.golden."""
    d = golden.GOLDEN_DIR / golden.torch_release()
    if not (d / golden.MANIFEST).is_file():
        pytest.skip(f"no golden corpus for torch {golden.torch_release()}")
    problems = golden.check(d)
    assert not problems, "\n".join(problems)
