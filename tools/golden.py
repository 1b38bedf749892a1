"""Golden streams: write, with the installed torch, one stream per catalog case.

    python -m tools.golden              # writes testing/golden/<torch release>/
    python -m tools.golden --check      # writes nothing; fails if the corpus of this torch
                                        # differs from what the writer produces now
    nox -s golden                       # every torch version of the sweep

The corpus of a torch version holds one stream per case of `golden_cases()` that this torch
can build (every dtype and layout of `testing.cases.catalog()`, with the 8 MiB
`layout-large` shrunk to 64 KiB, plus nested Python values) and `manifest.json`: torch
version, format version, and per case its file, the file's sha256 and a fingerprint of the
tensor data the case builds (`fingerprint`, which tools/golden_test.py compares with what the
running torch builds: the catalog's contents must not depend on the torch version).

tools/golden_test.py loads every stream of every version directory present and compares it
bit for bit with the case rebuilt by the running torch.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import json
import math
import os
import platform
import re
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import serializer
from testing.cases import FORMAT_DTYPES, Case, catalog, make_tensor

# Not resolve(): under Bazel the corpus is the test's data, beside this file in the runfiles.
GOLDEN_DIR = Path(os.path.abspath(__file__)).parent.parent / "testing" / "golden"
MANIFEST = "manifest.json"
SUFFIX = ".srlz"
# layout-large is 8 MiB (the chunked path); its golden twin keeps the corpus small.
SHRUNK = {"layout-large": ("layout-large-shrunk", 1 << 14)}


def torch_release(version: str | None = None) -> str:
    """'2.13.0+cpu' -> '2.13.0': the name of a version directory."""
    return (version or torch.__version__).split("+")[0]


def version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", name))


def _nested_values(d: str) -> dict[Any, Any]:
    """Nested Python values around tensors: everything weights_only=True admits."""
    f32 = torch.float32
    w = make_tensor((4, 3), f32, d, seed=21)
    deep: Any = [make_tensor((2,), torch.int32, d, seed=22)]
    for i in range(40):
        deep = [i, deep] if i % 2 else {"level": i, "inner": deep}
    return {
        "config": OrderedDict(
            lr=1e-3, betas=(0.9, 0.999), name="adam ✓", amsgrad=False, eps=None, ids={3, 1, 2}
        ),
        "layers": [
            {"weight": w, "bias": make_tensor((3,), torch.bfloat16, d, seed=23)},
            {"weight_t": w.t(), "tail": w[2:], "param": torch.nn.Parameter(w.clone())},
        ],
        "views": (w[:, 1], w[1]),
        "numbers": [
            0,
            -1,
            2**63,
            -(2**100),
            0.0,
            -0.0,
            1.5e-300,
            float("inf"),
            float("-inf"),
            float("nan"),
            3 + 4j,
            True,
            None,
        ],
        "torch_values": [
            torch.Size([2, 0, 3]),
            torch.Size([]),
            torch.float8_e5m2,
            torch.complex64,
            torch.device("cpu"),
            torch.device("cuda", 1),
        ],
        "strings": ["", "ascii", "ünïcödé ✓ 🙂", "\x00\n\r\x1a"],
        "bytes": [b"", bytes(range(256))],
        "slice": slice(1, None, 2),
        "empty": [[], (), {}, set(), frozenset(), OrderedDict()],
        "frozen": frozenset({-5, 7}),
        "keys": {0: "int", (1, "a"): "tuple", None: "none", 2.5: "float", True: "bool"},
        "deep": deep,
        "step": 123456789,
    }


def _shrunk(numel: int) -> Callable[[str], Any]:
    return lambda d: {"t": make_tensor((numel,), torch.float32, d)}


def golden_cases() -> list[Case]:
    """The catalog of the running torch, small enough to commit, plus nested values."""
    cases: list[Case] = []
    for case in catalog():
        if case.name in SHRUNK:
            name, numel = SHRUNK[case.name]
            cases.append(Case(name, _shrunk(numel), case.tags | {"golden"}))
        else:
            cases.append(case)
    cases.append(Case("golden-nested-values", _nested_values, frozenset({"golden"})))
    return cases


def fingerprint_cases() -> list[Case]:
    """Cases whose tensor data is fingerprinted (not stored): the golden ones plus the
    full-size cases they shrink, so every byte make_tensor produces is compared across
    versions."""
    shrunk = [c for c in catalog() if c.name in SHRUNK]
    return [*golden_cases(), *shrunk]


def tensors_of(obj: Any, path: str = "obj") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors_of(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors_of(v, f"{path}[{i}]")


def dtypes_of(obj: Any) -> list[str]:
    """Names of the dtypes an object's tensors use (also dtypes held as values)."""
    found: set[str] = set()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            found.add(str(o.dtype).removeprefix("torch."))
        elif isinstance(o, torch.dtype):
            found.add(str(o).removeprefix("torch."))
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple, set, frozenset)):
            for v in o:
                walk(v)

    walk(obj)
    return sorted(found, key=FORMAT_DTYPES.index)


def fingerprint(obj: Any) -> str:
    """sha256 over each tensor's path, dtype, shape and values (raw bytes, C order).

    Independent of the serializer and of pickle, so it tells whether two torch versions
    build the same case."""
    h = hashlib.sha256()
    for path, t in tensors_of(obj):
        t = t.detach().resolve_conj().cpu().contiguous()
        h.update(f"{path}|{str(t.dtype)}|{tuple(t.shape)}|{math.prod(t.shape)}\n".encode())
        if t.numel():
            raw = t.reshape(-1).view(torch.uint8)  # no numpy: torch < 2.5 may lack it
            h.update(ctypes.string_at(raw.data_ptr(), raw.numel()))
    return h.hexdigest()


def _bytes_of_stream(obj: Any) -> bytes:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    return buf.getvalue()


def build(out_dir: Path) -> dict[str, Any]:
    """Writes the streams into `out_dir` and returns the manifest (also written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"*{SUFFIX}"):
        old.unlink()
    missing = [n for n in FORMAT_DTYPES if not hasattr(torch, n)]
    manifest: dict[str, Any] = {
        "torch": torch.__version__,
        "format_version": list(serializer.FORMAT_VERSION),
        "serializer": serializer.__version__,
        "python": platform.python_version(),
        "generated_by": "python -m tools.golden",
        "dtypes_missing": missing,
        "cases": {},
        "skipped": {},
        "fingerprints": {},
    }
    golden = {c.name for c in golden_cases()}
    for case in fingerprint_cases():
        try:
            obj = case.build("cpu")
        except Exception as e:  # a case this torch cannot build
            manifest["skipped"][case.name] = f"cannot build on torch {torch.__version__}: {e!r}"
            continue
        manifest["fingerprints"][case.name] = fingerprint(obj)
        if case.name not in golden:
            continue
        try:
            data = _bytes_of_stream(obj)
        except Exception as e:
            manifest["skipped"][case.name] = f"cannot save on torch {torch.__version__}: {e!r}"
            continue
        file = case.name + SUFFIX
        (out_dir / file).write_bytes(data)
        manifest["cases"][case.name] = {
            "file": file,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "weights_only": case.weights_only,
            "dtypes": dtypes_of(obj),
        }
    text = json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    (out_dir / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def check(out_dir: Path) -> list[str]:
    """Differences between the committed corpus of this torch and what is written now."""
    manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    problems = []
    for case in golden_cases():
        entry = manifest["cases"].get(case.name)
        if entry is None:
            problems.append(f"{case.name}: not in the corpus")
            continue
        data = _bytes_of_stream(case.build("cpu"))
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{case.name}: the writer now produces different bytes")
    return problems


def load_manifest(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def version_dirs(root: Path = GOLDEN_DIR) -> list[Path]:
    found = [p for p in root.iterdir() if (p / MANIFEST).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: version_key(p.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=GOLDEN_DIR, help="corpus root")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # complex32 "experimental"
    out_dir = args.root / torch_release()
    if args.check:
        problems = check(out_dir)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    manifest = build(out_dir)
    size = sum(e["bytes"] for e in manifest["cases"].values())
    print(
        f"torch {manifest['torch']}: {len(manifest['cases'])} streams, {size} bytes "
        f"in {out_dir}; skipped {len(manifest['skipped'])}; "
        f"dtypes missing: {', '.join(manifest['dtypes_missing']) or 'none'}"
    )
    for name, why in manifest["skipped"].items():
        print(f"  skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
