"""Benchmarks: this library beside torch's streaming functions, torch.save/load, safetensors
and the raw limit, through a file and through an os.pipe to another process.

    python -m tools.bench                 # full run (about 10 minutes on 2 cores)
    python -m tools.bench --quick         # small sets, to check the harness
    python -m tools.bench --sets small --transports pipe --libs ours,torch_stream

Every run of a case is its own process doing the operation once, cold: memory never touched
before (as in a process that receives a checkpoint), stream files in the page cache. `load`
allocates its result; `load_into` fills tensors allocated and touched before the clock starts
(ours: serializer.load_into; raw: readinto; the others: load, then copy_). Throughput is
payload bytes over wall time, the median of --reps processes; peak RSS growth is the largest,
relative to the process's RSS just before the operation. Ratios are only meaningful between
figures of one run (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

LIBS = ["ours", "torch_stream", "torch", "safetensors", "raw"]
OPS = ["save", "load", "load_into"]
TRANSPORTS = ["file", "pipe"]
SETS = ["big", "small"]
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031


# ---------------------------------------------------------------------------- data


def uniform_set(count: int, numel: int) -> str:
    """The name of a set of `count` float32 tensors of `numel` elements each."""
    return f"u{count}x{numel}"


def set_numels(name: str, quick: bool) -> list[int]:
    """Element counts (float32) of the tensors of a set."""
    import torch

    if name.startswith("u") and "x" in name:  # uniform_set
        count, numel = name[1:].split("x")
        return [int(numel)] * int(count)
    if name == "big":  # 72 tensors, 1 GiB
        count, each = (8, 1 << 20) if quick else (72, (1 << 30) // 72 // 4)
        return [each] * count
    # 20,000 tensors of 1-51 KiB, about 512 MiB
    g = torch.Generator().manual_seed(0)
    numels: list[int] = torch.randint(256, 13056, (2000 if quick else 20000,), generator=g).tolist()
    return numels


def make_set(name: str, quick: bool) -> dict[str, Any]:
    import torch

    numels = set_numels(name, quick)
    return {f"layer{i}.weight": torch.empty(n).fill_(i % 97) for i, n in enumerate(numels)}


def payload(sd: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


# ---------------------------------------------------------------------------- libraries


def _memory(t: Any) -> memoryview:
    from serializer._byteio import tensor_memory

    return tensor_memory(t)


def _readinto_exact(f: Any, t: Any) -> None:
    """The raw limit's read: fill tensor `t` from `f` with a plain readinto loop."""
    view = _memory(t)
    while view:
        got = f.readinto(view)
        if not got:
            raise EOFError
        view = view[got:]


def lib_save(lib: str, sd: dict[str, Any], f: Any) -> None:
    if lib == "ours":
        import serializer

        serializer.save(sd, f)
    elif lib == "torch_stream":
        from torch.distributed._serialization import _streaming_save

        _streaming_save(sd, f)
    elif lib == "torch":
        import torch

        torch.save(sd, f)
    elif lib == "safetensors":
        from safetensors.torch import save

        f.write(save(sd))
    elif lib == "raw":
        for t in sd.values():
            view = _memory(t)
            while view:
                n = f.write(view)
                view = view[n:]
    else:
        raise ValueError(lib)


def lib_load(lib: str, f: Any, shapes: list[int]) -> Any:
    if lib == "ours":
        import serializer

        return serializer.load(f)
    if lib == "torch_stream":
        from torch.distributed._serialization import _streaming_load

        return _streaming_load(f)
    if lib == "torch":
        import torch

        if not f.seekable():
            f = io.BytesIO(f.read())
        return torch.load(f)
    if lib == "safetensors":
        from safetensors.torch import load

        return load(f.read())
    if lib == "raw":
        import torch

        out = [torch.empty(n) for n in shapes]
        for t in out:
            _readinto_exact(f, t)
        return out
    raise ValueError(lib)


# ---------------------------------------------------------------------------- one case


def _rss() -> int:
    from serializer.cli.demo import rss

    return rss()


def _peak() -> int:
    from serializer.cli.demo import peak_rss

    return peak_rss()


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    return r, w


def _drain(r: int) -> subprocess.Popen[bytes]:
    """Another process that reads a pipe to its end and discards the bytes."""
    code = (
        f"import os\nbuf = bytearray({PIPE_SIZE})\nwith open({r}, 'rb', buffering=0) as f:\n"
        "    while f.readinto(buf): pass\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], pass_fds=(r,))


def _feed(path: str, w: int) -> subprocess.Popen[bytes]:
    """Another process that copies a file into a pipe (sendfile, no user-space copy)."""
    code = (
        f"import os\nfd = os.open({path!r}, os.O_RDONLY)\nn = os.fstat(fd).st_size\noff = 0\n"
        f"while off < n:\n    off += os.sendfile({w}, fd, off, n - off)\nos.close({w})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], pass_fds=(w,))


def lib_load_into(lib: str, f: Any, dest: dict[str, Any]) -> None:
    """Load into existing tensors, each library its own best way."""
    if lib == "ours":
        import serializer

        serializer.load_into(dest, f)
    elif lib == "raw":
        for t in dest.values():
            _readinto_exact(f, t)
    else:
        loaded = lib_load(lib, f, [])
        for k, t in dest.items():
            t.copy_(loaded[k])


def _import(lib: str) -> None:
    modules = {
        "ours": "serializer",
        "torch_stream": "torch.distributed._serialization",
        "safetensors": "safetensors.torch",
    }
    if lib in modules:
        importlib.import_module(modules[lib])


def run_case(
    lib: str, op: str, transport: str, set_name: str, path: str, quick: bool
) -> dict[str, Any]:
    """One operation, cold, in this fresh process: its time and peak RSS growth."""
    import torch

    torch.set_num_threads(1)
    _import(lib)  # the operation is measured, not the library's import
    sd = make_set(set_name, quick) if op in ("save", "load_into") else None
    size = sum(set_numels(set_name, quick)) * 4
    before = _rss()
    if op == "save":
        if transport == "file":
            start = time.perf_counter()
            with open(path, "wb") as f:
                lib_save(lib, sd, f)  # type: ignore[arg-type]
        else:
            r, w = _pipe()
            proc = _drain(r)
            os.close(r)
            start = time.perf_counter()
            with open(w, "wb", buffering=0) as f:
                lib_save(lib, sd, f)  # type: ignore[arg-type]
            proc.wait()
    else:
        proc = None
        if transport == "file":
            f = open(path, "rb")
        else:
            r, w = _pipe()
            proc = _feed(path, w)
            os.close(w)
            # torch's streaming load breaks on raw short reads: it gets a buffered pipe.
            f = open(r, "rb", buffering=-1 if lib == "torch_stream" else 0)
        start = time.perf_counter()
        with f:
            if op == "load":
                _result = lib_load(lib, f, set_numels(set_name, quick))  # alive until timed
            else:
                lib_load_into(lib, f, sd)  # type: ignore[arg-type]
        if proc is not None:
            proc.wait()
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "rss_growth": _peak() - before, "payload": size}


# ---------------------------------------------------------------------------- driver


def _child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tools.bench", *args], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _available(lib: str) -> bool:
    try:
        if lib == "torch_stream":
            import torch.distributed._serialization  # noqa: F401
        elif lib == "safetensors":
            import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def child_env() -> dict[str, str]:
    """The environment of every measured process: one torch thread, this checkout first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def measure_cases(
    set_name: str,
    op: str,
    transport: str,
    libs: list[str],
    reps: int,
    tmp: str,
    quick: bool = False,
    env: dict[str, str] | None = None,
    on_result: Any = None,
    keep: bool = False,
) -> list[dict[str, Any]]:
    """One case for each library, `reps` fresh processes each, taken in turns (rep 1 of every
    library, then rep 2, ...; the first library of a turn rotates), so that drift of the
    machine over the run falls on all libraries alike. A save writes a new file every time
    (the previous one is removed outside the timed process). A load reads the stream file
    already at its path (a save's, the same bytes) or one prepared first; `keep` leaves the
    files for the next case."""
    env = env or child_env()
    flags = ["--quick"] if quick else []
    paths = {lib: os.path.join(tmp, f"{lib}-{set_name}") for lib in libs}
    if op != "save":
        for lib in [lib for lib in libs if not os.path.exists(paths[lib])]:
            _child(["--prepare", f"{lib}:{set_name}", "--path", paths[lib], *flags], env)
    runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libs}
    for rep in range(reps):
        k = rep % len(libs)
        for lib in libs[k:] + libs[:k]:
            if op == "save" and os.path.exists(paths[lib]):
                os.remove(paths[lib])
            args = ["--case", f"{lib}:{op}:{transport}:{set_name}", "--path", paths[lib]]
            runs[lib].append(_child([*args, *flags], env))
    results = []
    for lib in libs:
        r = _summarize(runs[lib])
        r.update(lib=lib, op=op, transport=transport, set=set_name)
        results.append(r)
        if on_result is not None:
            on_result(r)
    for path in paths.values():
        if not keep and os.path.exists(path):
            os.remove(path)
    return results


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median time and largest RSS growth over processes, each one cold run."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return dict(failed[0])
    times = [r["seconds"] for r in runs]
    payload = runs[0]["payload"]
    return {
        "payload": payload,
        "seconds": times,
        "gbps": payload / statistics.median(times) / 1e9,
        "rss_growth": max(r["rss_growth"] for r in runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sets, to check the harness")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--json", help="also write every result to this file")
    p.add_argument("--workdir", default=None, help="where stream files go (default: a temp dir)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--prepare", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.prepare:  # write the stream file a load case reads
        lib, set_name = a.prepare.split(":")
        with open(a.path, "wb") as f:
            lib_save(lib, make_set(set_name, a.quick), f)
        print(json.dumps({"ok": True}))
        return
    if a.case:
        lib, op, transport, set_name = a.case.split(":")
        print(json.dumps(run_case(lib, op, transport, set_name, a.path, a.quick)))
        return

    env = child_env()
    libs = [lib for lib in a.libs.split(",") if _available(lib)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        for set_name in a.sets.split(","):
            for op in a.ops.split(","):
                for transport in a.transports.split(","):
                    results += measure_cases(
                        set_name, op, transport, libs, a.reps, tmp, a.quick, env, _print_row
                    )
    print()
    print(report(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


def _print_row(r: dict[str, Any]) -> None:
    if "error" in r:
        print(
            f"{r['set']:5} {r['op']:4} {r['transport']:4} {r['lib']:12} ERROR {r['error']}",
            flush=True,
        )
        return
    print(
        f"{r['set']:5} {r['op']:4} {r['transport']:4} {r['lib']:12} {r['gbps']:6.2f} GB/s  "
        f"peak RSS +{r['rss_growth'] / 2**20:7.0f} MiB ({r['rss_growth'] / r['payload']:.2f}x)",
        flush=True,
    )


def report(results: list[dict[str, Any]]) -> str:
    """A markdown table: GB/s, RSS growth, and ours / reference ratios, per case."""
    by: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["set"], r["op"], r["transport"]), {})[r["lib"]] = r
    refs = [lib for lib in LIBS if lib != "ours"]
    head = (
        "| set | op | via | ours GB/s | ours RSS | "
        + " | ".join(f"{ref} GB/s (ours ×)" for ref in refs)
        + " |"
    )
    lines = [head, "|" + " --- |" * (5 + len(refs))]
    for (set_name, op, transport), row in by.items():
        ours = row.get("ours", {})
        cells = [set_name, op, transport]
        if not ours:
            cells += ["—", ""]
        elif "gbps" in ours:
            cells += [
                f"{ours['gbps']:.2f}",
                f"+{ours['rss_growth'] / 2**20:.0f} MiB "
                f"({ours['rss_growth'] / ours['payload']:.2f}x)",
            ]
        else:
            cells += ["error", ""]
        for ref in refs:
            r = row.get(ref)
            if r is None:
                cells.append("—")
            elif "gbps" not in r:
                cells.append("error")
            elif "gbps" in ours:
                cells.append(f"{r['gbps']:.2f} ({ours['gbps'] / r['gbps']:.2f}×)")
            else:
                cells.append(f"{r['gbps']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
