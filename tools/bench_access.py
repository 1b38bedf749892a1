"""Random access, side by side in one run: what reading part of a checkpoint costs.

    python -m tools.bench_access                # 1 GiB set (about 3 GiB of disk in a temp dir)
    python -m tools.bench_access --gib 0.125    # smaller, to check the harness

Cases, each in a fresh process (cold process, files in the page cache):
- `load_keys` of one small tensor from the big file: bytes the process read (/proc rchar);
- `open().get_tensor` of every tensor, beside safetensors' `safe_open().get_tensor`;
- `load(mmap=True)` beside `torch.load(mmap=True)` and safetensors' `load_file`: time of the
  call, RSS growth before any tensor is touched, and time to touch every tensor;
- a DCP checkpoint saved on 4 ranks and loaded resharded on 2: bytes each loading rank
  read, with this library's storage layer beside DCP's own FileSystemReader.
Prints a Markdown table (docs/BENCHMARKS.md, "Random access").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

TENSORS = 64


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def make(directory: str, gib: float) -> None:
    import safetensors.torch
    import torch

    import serializer

    numel = int(gib * (1 << 30) / 4 / TENSORS)
    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(numel, generator=g) for i in range(TENSORS)}
    state["small.bias"] = torch.arange(3.0)
    serializer.save(state, os.path.join(directory, "s.srlz"), sync=False)
    torch.save(state, os.path.join(directory, "s.pt"))
    safetensors.torch.save_file(state, os.path.join(directory, "s.safetensors"))


def case(name: str, directory: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch

    import serializer

    ours, pt, st = (os.path.join(directory, f"s.{ext}") for ext in ("srlz", "pt", "safetensors"))
    if name == "load_keys":
        before = _rchar()
        start = time.perf_counter()
        serializer.load_keys(ours, ["small.bias"])
        return {"s": time.perf_counter() - start, "read": _rchar() - before}
    if name in ("open", "safe_open"):
        start = time.perf_counter()
        if name == "open":
            with serializer.open(ours) as f:
                got = [f.get_tensor(k) for k in f.keys()]
        else:
            from safetensors import safe_open

            with safe_open(st, "pt") as f:
                got = [f.get_tensor(k) for k in f.keys()]
        took = time.perf_counter() - start
        total = sum(float(t.sum()) for t in got)  # safetensors' tensors are lazy: read them
        return {"s": took, "read_s": time.perf_counter() - start, "sum": total}
    if name in ("mmap", "torch_mmap", "safetensors_load_file"):
        rss = _rss()
        start = time.perf_counter()
        if name == "mmap":
            obj = serializer.load(ours, mmap=True)
        elif name == "torch_mmap":
            obj = torch.load(pt, mmap=True, weights_only=True)
        else:
            import safetensors.torch

            obj = safetensors.torch.load_file(st)
        took = time.perf_counter() - start
        grown = _rss() - rss
        start = time.perf_counter()
        total = sum(float(t.sum()) for t in obj.values())
        return {"s": took, "rss": grown, "touch_s": time.perf_counter() - start, "sum": total}
    raise ValueError(name)


def _dcp_save(directory: str, layer: str) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from serializer.distributed import SerializerStorageWriter

    full = torch.arange(float(1 << 24)).reshape(1 << 12, 1 << 12)  # 64 MiB
    mesh = init_device_mesh("cpu", (4,))
    sd = {"w": distribute_tensor(full, mesh, [Shard(0)])}
    writer = (
        SerializerStorageWriter(os.path.join(directory, "ours"))
        if layer == "ours"
        else dcp.FileSystemWriter(os.path.join(directory, "dcp"))
    )
    dcp.save(sd, storage_writer=writer)


def _dcp_load(directory: str, layer: str, dim: int) -> dict[str, Any]:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from serializer.distributed import SerializerStorageReader

    mesh = init_device_mesh("cpu", (2,))
    dest = {"w": distribute_tensor(torch.zeros(1 << 12, 1 << 12), mesh, [Shard(dim)])}
    reader = (
        SerializerStorageReader(os.path.join(directory, "ours"))
        if layer == "ours"
        else dcp.FileSystemReader(os.path.join(directory, "dcp"))
    )
    before = _rchar()
    dcp.load(dest, storage_reader=reader)
    return {"read": _rchar() - before, "shard": dest["w"].to_local().numel() * 4}


def dcp_case(layer: str, dim: int) -> dict[str, Any]:
    from testing.distributed import run_ranks

    directory = tempfile.mkdtemp(prefix="bench-dcp-")
    run_ranks(4, "tools.bench_access:_dcp_save", directory, layer, timeout=600)
    results = run_ranks(2, "tools.bench_access:_dcp_load", directory, layer, dim, timeout=600)
    return {"read": [r["read"] for r in results], "shard": results[0]["shard"]}


def _run(name: str, directory: str) -> dict[str, Any]:
    code = (
        "import json, sys; from tools.bench_access import case; "
        f"print(json.dumps(case({name!r}, {directory!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"case {name} failed:\n{result.stderr[-3000:]}")
    out = result.stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the set")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-dcp", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-access-") as directory:
        make(directory, args.gib)
        size = os.path.getsize(os.path.join(directory, "s.srlz"))
        runs: dict[str, list[dict[str, Any]]] = {}
        names = ["load_keys", "open", "safe_open", "mmap", "torch_mmap", "safetensors_load_file"]
        for _ in range(args.reps):  # libraries take turns, so drift falls on all alike
            for name in names:
                runs.setdefault(name, []).append(_run(name, directory))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    print(f"set: {TENSORS} float32 tensors + 1 small, {_mib(size)}; median of {args.reps}\n")
    print("| case | ours | reference | ratio (reference time / ours) |")
    print("| --- | --- | --- | --- |")
    lk = med["load_keys"]
    print(f"| `load_keys` of one 12-byte tensor | {_mib(lk['read'])} read, {lk['s']:.4f} s | "
          f"(file: {_mib(size)}) | — |")  # fmt: skip
    o, so = med["open"], med["safe_open"]
    print(f"| `open().get_tensor`, every tensor: the calls | {o['s']:.3f} s | safe_open: "
          f"{so['s']:.3f} s | {so['s'] / o['s']:.2f}x |")  # fmt: skip
    print(f"| ... with every tensor then read (summed) | {o['read_s']:.3f} s | "
          f"{so['read_s']:.3f} s | {so['read_s'] / o['read_s']:.2f}x |")  # fmt: skip
    m = med["mmap"]
    for ref, label in (
        ("torch_mmap", "torch.load(mmap=True)"),
        ("safetensors_load_file", "load_file"),
    ):
        r = med[ref]
        print(f"| `load(mmap=True)` vs {label}: call | {m['s']:.4f} s, RSS +{_mib(m['rss'])} | "
              f"{r['s']:.4f} s, RSS +{_mib(r['rss'])} | {r['s'] / m['s']:.2f}x |")  # fmt: skip
        print(f"| ... then touch every tensor | {m['touch_s']:.3f} s | {r['touch_s']:.3f} s | "
              f"{r['touch_s'] / m['touch_s']:.2f}x |")  # fmt: skip
    if not args.no_dcp:
        for dim, how in ((0, "rows to rows"), (1, "rows to columns")):
            for layer in ("ours", "dcp"):
                result = dcp_case(layer, dim)
                reads = ", ".join(_mib(r) for r in result["read"])
                print(f"| DCP 4 -> 2 ranks, {how}: read per loading rank ({layer}) | {reads} "
                      f"| shard {_mib(result['shard'])} of 64 MiB | — |")  # fmt: skip


if __name__ == "__main__":
    main()
