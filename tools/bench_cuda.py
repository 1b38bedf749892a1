"""CUDA benchmark: save and load a few GiB of GPU tensors, beside torch's streaming functions
and the pinned copy bandwidth measured in the same run.

    python -m tools.bench_cuda [--gib 4] [--tensors 64] [--reps 3]

The stream goes to a writer that discards bytes (save) and comes from memory (load), so the
figures measure the device side: copies, staging and checksums, not a disk or a pipe.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import torch

import serializer


class _Null(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(memoryview(b))


def _timed(fn: Any, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gib", type=float, default=4.0)
    p.add_argument("--tensors", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    each = int(a.gib * (1 << 30)) // a.tensors // 4
    sd = {f"t{i}": torch.randn(each, device="cuda") for i in range(a.tensors)}
    size = each * 4 * a.tensors
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}: "
        f"{a.tensors} tensors, {size / 2**30:.2f} GiB"
    )

    chunk = torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    d2h = chunk.numel() / _timed(lambda: chunk.copy_(dev, non_blocking=True), a.reps) / 1e9
    h2d = chunk.numel() / _timed(lambda: dev.copy_(chunk, non_blocking=True), a.reps) / 1e9
    print(f"pinned copy bandwidth: device->host {d2h:.1f} GB/s, host->device {h2d:.1f} GB/s")

    buf = io.BytesIO()
    serializer.save(sd, buf)
    ours_stream = buf.getvalue()
    rows = [("serializer save", lambda: serializer.save(sd, _Null()), d2h)]
    rows.append(("serializer load", lambda: serializer.load(io.BytesIO(ours_stream)), h2d))
    try:
        from torch.distributed._serialization import _streaming_load, _streaming_save

        tbuf = io.BytesIO()
        _streaming_save(sd, tbuf)
        torch_stream = tbuf.getvalue()
        rows.append(("torch _streaming_save", lambda: _streaming_save(sd, _Null()), d2h))
        rows.append(
            ("torch _streaming_load", lambda: _streaming_load(io.BytesIO(torch_stream)), h2d)
        )
    except ImportError:
        pass
    results = {}
    stats = getattr(torch.cuda.memory, "host_memory_stats", None)
    for name, fn, bound in rows:
        if stats is not None:
            torch.cuda.memory.reset_peak_host_memory_stats()
        gbps = size / _timed(fn, a.reps) / 1e9
        results[name] = gbps
        pinned = stats()["allocated_bytes.peak"] / 2**20 if stats is not None else float("nan")
        print(
            f"{name:24} {gbps:6.2f} GB/s  {gbps / bound:5.0%} of pinned copy  "
            f"pinned peak {pinned:.0f} MiB"
        )
    if "torch _streaming_save" in results:
        for op in ("save", "load"):
            ratio = results[f"serializer {op}"] / results[f"torch _streaming_{op}"]
            print(f"{op}: serializer / torch = {ratio:.2f}x")
    print(f"staging ring: {serializer._ring.staging_config()}")


if __name__ == "__main__":
    main()
