"""The main job: stream a real model's state dict over a loopback socket to another process.

    python -m serializer demo [--layers 8] [--width 1024] [--quiet]

A sender process builds a deterministic `torch.nn.TransformerEncoder` (8 layers of width 1024:
about 400 MB of float32) and sends its state dict over TCP on 127.0.0.1; a receiver process
builds the same architecture with different weights, loads the stream in place into it,
and verifies every tensor bit for bit against the sender's weights. The same transfer is
then made with torch's `_streaming_save`/`_streaming_load` and with `torch.save`/`torch.load`
(each pair in fresh processes), and the three are printed side by side. The receiver shows
its progress on stderr: a tqdm bar on a terminal, plain lines otherwise, none with --quiet.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from typing import Any

import torch

import serializer
from serializer.cli import progress

METHODS = {
    "serializer": "serializer.save / serializer.load_into",
    "torch_stream": "torch _streaming_save / _streaming_load",
    "torch": "torch.save / torch.load",
}


def build_model(layers: int, width: int, seed: int) -> torch.nn.Module:
    layer = torch.nn.TransformerEncoderLayer(
        d_model=width, nhead=max(1, width // 64), dim_feedforward=4 * width, batch_first=True
    )
    model = torch.nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # distinct values in every tensor, not deep copies
            p.normal_(0.0, 0.02, generator=g)
    return model


def rss() -> int:
    """Current RSS of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak RSS of this process (VmHWM; unlike ru_maxrss it does not carry a parent's
    peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def receive(method: str, layers: int, width: int, total: int, show: bool) -> dict[str, Any]:
    model = build_model(layers, width, seed=1)  # different weights, to be overwritten
    dest = model.state_dict()
    server = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"port": server.getsockname()[1]}), flush=True)
    conn, _ = server.accept()
    before = rss()
    start = time.perf_counter()
    with conn:
        if method == "serializer":
            if show:
                with progress.make(f"  {method}", total) as bar:
                    serializer.load_into(dest, conn, progress=bar.hook)
            else:
                serializer.load_into(dest, conn)
        elif method == "torch_stream":
            from torch.distributed._serialization import _streaming_load

            warnings.filterwarnings("ignore", "The given buffer is not writable")
            model.load_state_dict(_streaming_load(conn.makefile("rb")))  # type: ignore[arg-type]
        else:
            data = io.BytesIO(conn.makefile("rb").read())
            model.load_state_dict(torch.load(data))
    elapsed = time.perf_counter() - start
    growth = peak_rss() - before
    expected = build_model(layers, width, seed=0).state_dict()
    actual = model.state_dict()
    bad = [
        k for k, v in expected.items()
        if not torch.equal(actual[k].view(torch.uint8), v.view(torch.uint8))
    ]  # fmt: skip
    return {"seconds": elapsed, "rss_growth": growth, "mismatched": bad}


def send(method: str, layers: int, width: int, port: int) -> dict[str, Any]:
    sd = build_model(layers, width, seed=0).state_dict()
    before = rss()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        if method == "serializer":
            serializer.save(sd, sock)
        else:
            with sock.makefile("wb") as f:
                if method == "torch_stream":
                    from torch.distributed._serialization import _streaming_save

                    _streaming_save(sd, f)
                else:
                    torch.save(sd, f)
        elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "rss_growth": peak_rss() - before}


def _run_pair(method: str, args: argparse.Namespace, total: int) -> dict[str, Any]:
    base = [sys.executable, "-m", "serializer", "demo", "--layers", str(args.layers),
            "--width", str(args.width), *(["--quiet"] if args.quiet else [])]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore:Failed to initialize NumPy",
    }
    receiver = subprocess.Popen(
        [*base, "--role", "receive", "--method", method, "--total", str(total)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert receiver.stdout is not None
    port = json.loads(receiver.stdout.readline())["port"]
    sender = subprocess.run(
        [*base, "--role", "send", "--method", method, "--port", str(port)],
        stdout=subprocess.PIPE, text=True, env=env, check=True,
    )  # fmt: skip
    out, _ = receiver.communicate()
    if receiver.returncode != 0:
        raise SystemExit(f"{method}: receiver failed ({receiver.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["send"] = json.loads(sender.stdout.strip().splitlines()[-1])
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (also those of `serializer demo`)."""
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--role", choices=["receive", "send"], help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--total", type=int, help=argparse.SUPPRESS)


def main(argv: list[str]) -> None:
    """``python -m serializer demo ARGS`` with its own parser (`serializer.cli` is the usual
    way in)."""
    p = argparse.ArgumentParser(prog="python -m serializer demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)

    if args.role == "receive":
        result = receive(
            args.method, args.layers, args.width, args.total,
            args.method == "serializer" and not args.quiet,
        )  # fmt: skip
        print(json.dumps(result), flush=True)
        return 0
    if args.role == "send":
        print(json.dumps(send(args.method, args.layers, args.width, args.port)), flush=True)
        return 0

    sd = build_model(args.layers, args.width, seed=0).state_dict()
    total = sum(t.numel() * t.element_size() for t in sd.values())
    print(
        f"model: TransformerEncoder, {args.layers} layers of width {args.width}: "
        f"{len(sd)} tensors, {total / 1e6:.0f} MB; over TCP on 127.0.0.1 to another process"
    )
    del sd
    methods = [m for m in args.methods.split(",") if m in METHODS]
    if "torch_stream" in methods:
        try:
            from torch.distributed import _serialization  # noqa: F401
        except ImportError:
            methods.remove("torch_stream")
            print(f"(torch {torch.__version__} has no _streaming_save: skipped)")
    results = {}
    for method in methods:
        results[method] = r = _run_pair(method, args, total)
        verdict = "bit-exact" if not r["mismatched"] else f"{len(r['mismatched'])} tensors DIFFER"
        print(
            f"  {METHODS[method]:42} {r['seconds']:6.2f} s {total / r['seconds'] / 1e9:5.2f} GB/s"
            f"  receiver peak +{r['rss_growth'] / 2**20:5.0f} MiB"
            f"  sender peak +{r['send']['rss_growth'] / 2**20:5.0f} MiB  {verdict}",
            flush=True,
        )
    print()
    ours = results.get("serializer")
    if ours:
        for method, r in results.items():
            if method != "serializer":
                print(
                    f"serializer vs {METHODS[method]}: {r['seconds'] / ours['seconds']:.2f}x "
                    f"faster, receiver memory {ours['rss_growth'] / 2**20:.0f} MiB vs "
                    f"{r['rss_growth'] / 2**20:.0f} MiB"
                )
    if any(r["mismatched"] for r in results.values()):
        raise SystemExit("verification FAILED")
    print("verified: every tensor arrived bit for bit")
    return 0
