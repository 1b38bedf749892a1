"""Scaling: how time and peak RSS grow with the work, ours beside torch's streaming functions
and the raw loop, as PNG plots and their data.

    python -m tools.scaling                       # docs/scaling_{size,count}.png, docs/scaling.json
    python -m tools.scaling --quick --out /tmp/s  # small ranges: checks the tool in a minute
    python -m tools.scaling --max-size-mib 4096 --max-count 1000000

Two sweeps, through a file in the page cache: total size (float32 tensors of a fixed size,
1 MiB each by default, from 1 MiB up to --max-size-mib) and tensor count (a fixed total, 64 MiB
by default, from 10 tensors up to --max-count). Each point is measured as tools/bench.py
measures a case (its machinery: one fresh process per operation, libraries in turns, the
median of --reps), for save, load (cold memory) and load_into (memory touched before).

Linearity: for each curve, the slope of log(time) against log(size or count) over its upper
half (where fixed costs no longer dominate) is recorded (`slopes` in the JSON): 1 is linear;
against count at a fixed total, per-tensor costs give a slope of at most 1 once they dominate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from typing import Any

from tools import bench

LIBS = ["ours", "torch_stream", "raw"]
OPS = ["save", "load", "load_into"]
MiB = 1 << 20


def size_points(max_mib: int, quick: bool) -> list[int]:
    """Total sizes in MiB: powers of 4 from 1, then doubling steps up to `max_mib`."""
    if quick:
        return [1, 4]
    points = [1, 4, 16, 64, 256, 1024]
    while points[-1] * 2 <= max_mib:
        points.append(points[-1] * 2)
    return [p for p in points if p <= max_mib]


def count_points(max_count: int, quick: bool) -> list[int]:
    if quick:
        return [10, 100]
    points = [10, 100, 1000, 10_000, 100_000, 200_000, 500_000, 1_000_000]
    return [p for p in points if p <= max_count]


def sweep(
    axis: str,
    points: list[tuple[int, str]],
    libs: list[str],
    ops: list[str],
    reps: int,
    tmp: str,
    log: Any = None,
) -> list[dict[str, Any]]:
    """Every (lib, op) at every point (x, set name): bench.measure_cases per op. A load and
    a load_into of one point read the same stream file, prepared once."""
    env = bench.child_env()
    log = log or (lambda line: print(line, flush=True))
    out = []
    for x, set_name in points:
        for op in ops:
            results = bench.measure_cases(set_name, op, "file", libs, reps, tmp, env=env, keep=True)
            for r in results:
                r.update(axis=axis, x=x)
                out.append(r)
                if "error" in r:
                    log(f"{axis:5} {x:>9} {op:9} {r['lib']:12} ERROR {r['error']}")
                else:
                    seconds = sorted(r["seconds"])[len(r["seconds"]) // 2]
                    log(
                        f"{axis:5} {x:>9} {op:9} {r['lib']:12} {seconds:8.3f} s  "
                        f"peak RSS +{r['rss_growth'] / MiB:7.1f} MiB"
                    )
        for name in os.listdir(tmp):  # this point's stream files
            os.remove(os.path.join(tmp, name))
    return out


def median_seconds(r: dict[str, Any]) -> float:
    s = sorted(r["seconds"])
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def curves(results: list[dict[str, Any]], axis: str) -> dict[tuple[str, str], list[Any]]:
    by: dict[tuple[str, str], list[Any]] = {}
    for r in results:
        if r["axis"] == axis and "seconds" in r:
            by.setdefault((r["lib"], r["op"]), []).append(r)
    for rows in by.values():
        rows.sort(key=lambda r: r["x"])
    return by


def slopes(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per axis and curve (`lib op`): the log-log slope of time over the upper half of x."""
    out: dict[str, dict[str, float | None]] = {}
    for axis in ("size", "count"):
        for (lib, op), rows in curves(results, axis).items():
            upper = rows[len(rows) // 2 :] if len(rows) >= 4 else rows
            out.setdefault(axis, {})[f"{lib} {op}"] = slope(
                [r["x"] for r in upper], [median_seconds(r) for r in upper]
            )
    return out


STYLE = {"ours": ("C0", "o"), "torch_stream": ("C1", "s"), "raw": ("C2", "^")}


def plot(results: list[dict[str, Any]], axis: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = curves(results, axis)
    ops = [op for op in OPS if any(k[1] == op for k in by)]
    fig, axes = plt.subplots(2, len(ops), figsize=(4.2 * len(ops), 7), squeeze=False)
    xlabel = "total size (MiB)" if axis == "size" else "tensor count"
    for j, op in enumerate(ops):
        top, bottom = axes[0][j], axes[1][j]
        for (lib, o), rows in by.items():
            if o != op:
                continue
            color, marker = STYLE.get(lib, ("C3", "x"))
            xs = [r["x"] for r in rows]
            top.plot(xs, [median_seconds(r) for r in rows], marker=marker, color=color, label=lib)
            bottom.plot(  # log scale: growth below 0.05 MiB (none) is drawn at 0.05
                xs, [max(r["rss_growth"] / MiB, 0.05) for r in rows], marker=marker, color=color
            )
        # A linear reference through the last point of ours: the slope a linear cost has.
        ours = by.get(("ours", op))
        if ours and axis == "size":
            x1, y1 = ours[-1]["x"], median_seconds(ours[-1])
            x0 = ours[0]["x"]
            top.plot([x0, x1], [y1 * x0 / x1, y1], ":", color="grey", label="linear")
        top.set_title(op)
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_ylabel("seconds (median)")
        top.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8)
        bottom.set_xscale("log")
        bottom.set_yscale("log")
        bottom.set_ylabel("peak RSS growth (MiB)")
        bottom.set_xlabel(xlabel)
        bottom.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _load_results(out: str) -> list[dict[str, Any]]:
    with open(os.path.join(out, "scaling.json")) as f:
        results: list[dict[str, Any]] = json.load(f)["results"]
    return results


def _plots(results: list[dict[str, Any]], out: str, setup: dict[str, Any]) -> None:
    kib = setup["tensor_bytes_of_size_sweep"] // 1024
    total = setup["total_bytes_of_count_sweep"] // MiB
    plot(
        results,
        "size",
        os.path.join(out, "scaling_size.png"),
        f"time and peak RSS against total size ({kib} KiB float32 tensors, file)",
    )
    plot(
        results,
        "count",
        os.path.join(out, "scaling_count.png"),
        f"time and peak RSS against tensor count ({total} MiB in all, file)",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small ranges, one process a point")
    p.add_argument("--out", default="docs", help="where the PNGs and scaling.json go")
    p.add_argument(
        "--reps", type=int, default=None, help="processes per point (default 3, 1 quick)"
    )
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--tensor-kib", type=int, default=1024, help="tensor size of the size sweep")
    p.add_argument("--max-size-mib", type=int, default=2048)
    p.add_argument("--count-total-mib", type=int, default=64, help="total of the count sweep")
    p.add_argument("--max-count", type=int, default=200_000)
    p.add_argument("--workdir", default=None, help="where stream files go (default: a temp dir)")
    p.add_argument("--replot", action="store_true", help="only redraw the PNGs from scaling.json")
    a = p.parse_args(argv)
    if a.replot:
        with open(os.path.join(a.out, "scaling.json")) as f:
            setup = json.load(f)["setup"]
        _plots(_load_results(a.out), a.out, setup)
        return
    reps = a.reps or (1 if a.quick else 3)
    libs = [lib for lib in a.libs.split(",") if bench._available(lib)]
    ops = a.ops.split(",")
    tensor_numel = a.tensor_kib * 1024 // 4
    total_mib = 1 if a.quick else a.count_total_mib
    sizes = [
        (mib, bench.uniform_set(max(1, mib * MiB // (tensor_numel * 4)), tensor_numel))
        for mib in size_points(a.max_size_mib, a.quick)
    ]
    counts = [
        (n, bench.uniform_set(n, max(1, total_mib * MiB // 4 // n)))
        for n in count_points(a.max_count, a.quick)
    ]
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        results = sweep("size", sizes, libs, ops, reps, tmp)
        results += sweep("count", counts, libs, ops, reps, tmp)
    data = {
        "setup": {
            "transport": "file",
            "reps": reps,
            "tensor_bytes_of_size_sweep": tensor_numel * 4,
            "total_bytes_of_count_sweep": total_mib * MiB,
            "sizes_mib": [x for x, _ in sizes],
            "counts": [x for x, _ in counts],
            "cpus": len(os.sched_getaffinity(0)),
        },
        "slopes": slopes(results),
        "results": results,
    }
    with open(os.path.join(a.out, "scaling.json"), "w") as f:
        json.dump(data, f, indent=1)
    _plots(results, a.out, data["setup"])
    for axis, by in data["slopes"].items():
        for curve, value in by.items():
            shown = "—" if value is None else f"{value:.2f}"
            print(f"slope of log time, {axis:5} {curve:22} {shown}")


if __name__ == "__main__":
    main()
