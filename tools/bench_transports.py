"""Checkpoint transports side by side: ours (`serializer.transports`) and torchft's, over
HTTP and over a gloo process group, from one sender to one or three receivers.

    python -m tools.bench_transports                  # the table of docs/BENCHMARKS.md
    python -m tools.bench_transports --quick          # small sets, to check the harness
    python -m tools.bench_transports --sets big --impls ours_http,torchft_http --receivers 1

Every case is fresh processes: one sender and its receivers, started together; they meet on
a TCP store that this driver holds. The sender builds the set and calls `send_checkpoint`;
each receiver (its destination allocated and touched first, for in-place cases) times its
`recv_checkpoint` and reports its peak RSS growth over it. A case's time is its slowest
receiver's; GB/s is payload over that time, the median of --reps runs; RSS growth is the
largest over receivers and runs. Ratios are only meaningful between figures of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

IMPLS = ["ours_http", "ours_pg", "torchft_http", "torchft_pg"]
SETS = ["big", "small"]
TIMEOUT = timedelta(seconds=300)
NUM_CHUNKS = 4  # HTTP parts fetched in parallel, for both libraries


def set_numels(name: str, quick: bool) -> list[int]:
    """Element counts (float32) of the tensors of a set."""
    import torch

    if name == "big":  # 16 tensors, 256 MiB
        count = 4 if quick else 16
        return [(16 << 20) // 4] * count
    # 2,000 tensors of 1-51 KiB, about 50 MiB
    g = torch.Generator().manual_seed(0)
    numels: list[int] = torch.randint(256, 13056, (200 if quick else 2000,), generator=g).tolist()
    return numels


def make_set(name: str, quick: bool, fill: float) -> dict[str, Any]:
    import torch

    numels = set_numels(name, quick)
    return {f"layer{i}.weight": torch.empty(n).fill_(fill + i % 97) for i, n in enumerate(numels)}


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _transport(impl: str, rank: int, world: int, port: int, state_dict: Any) -> Any:
    if impl.endswith("_http"):
        if impl == "ours_http":
            from serializer.transports import HTTPTransport

            return HTTPTransport(TIMEOUT, NUM_CHUNKS, state_dict=state_dict)
        from torchft.checkpointing.http_transport import HTTPTransport as TorchftHTTP

        return TorchftHTTP(TIMEOUT, NUM_CHUNKS)
    import torch
    from torchft.process_group import ProcessGroupGloo

    pg = ProcessGroupGloo(timeout=TIMEOUT)
    pg.configure(store_addr=f"127.0.0.1:{port}/pg", replica_id="0", rank=rank, world_size=world)
    if impl == "ours_pg":
        from serializer.transports import PGTransport

        return PGTransport(pg, TIMEOUT, torch.device("cpu"), state_dict=state_dict)
    from torchft.checkpointing.pg_transport import PGTransport as TorchftPG

    return TorchftPG(pg, TIMEOUT, torch.device("cpu"), state_dict=state_dict)


def role(args: argparse.Namespace) -> dict[str, Any]:
    """One process of a case: rank 0 sends, the others receive."""
    import torch
    from torch.distributed import TCPStore

    torch.set_num_threads(1)
    store = TCPStore("127.0.0.1", args.port, is_master=False, timeout=TIMEOUT)
    world = args.receivers + 1
    dest = make_set(args.set, args.quick, 0.0) if args.rank and args.inplace else None
    transport = _transport(args.impl, args.rank, world, args.port, (lambda: dest) if dest else None)
    if args.rank == 0:
        sd = make_set(args.set, args.quick, 1.0)
        store.set("metadata", transport.metadata())
        store.add("ready", 1)
        store.wait(["go"])
        transport.send_checkpoint(list(range(1, world)), 1, sd, TIMEOUT)
        store.wait([f"done{r}" for r in range(1, world)])
        transport.disallow_checkpoint()
        transport.shutdown()
        return {}
    metadata = store.get("metadata").decode()
    store.add("ready", 1)
    store.wait(["go"])
    before = _rss()
    start = time.perf_counter()
    got = transport.recv_checkpoint(0, metadata, 1, TIMEOUT)
    seconds = time.perf_counter() - start
    growth = _peak() - before
    store.set(f"done{args.rank}", "1")
    first = got["layer1.weight"]
    assert float(first[0]) == 2.0 and len(got) == len(set_numels(args.set, args.quick))
    payload = sum(t.nbytes for t in got.values())
    transport.shutdown()
    return {"seconds": seconds, "rss_growth": growth, "payload": payload}


def run_case(
    impl: str, set_name: str, receivers: int, inplace: bool, quick: bool
) -> dict[str, Any]:
    """One run: fresh processes for the sender and each receiver."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    common = [
        "--role", "--impl", impl, "--set", set_name, "--receivers", str(receivers),
        "--port", str(store.port),
    ] + (["--inplace"] if inplace else []) + (["--quick"] if quick else [])  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tools.bench_transports", *common, "--rank", str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(receivers + 1)
    ]
    try:
        deadline = time.monotonic() + 300
        while store.add("ready", 0) < receivers + 1:
            if time.monotonic() > deadline or any(p.poll() for p in procs):
                break
            time.sleep(0.05)
        store.set("go", "1")
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            return {"error": (err.strip().splitlines() or ["?"])[-1]}
        results.append(json.loads(out.strip().splitlines()[-1]))
    received = results[1:]
    return {
        "seconds": max(r["seconds"] for r in received),
        "rss_growth": max(r["rss_growth"] for r in received),
        "payload": received[0]["payload"],
    }


def measure(impl: str, set_name: str, receivers: int, inplace: bool, args: Any) -> dict[str, Any]:
    runs = [run_case(impl, set_name, receivers, inplace, args.quick) for _ in range(args.reps)]
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    seconds = statistics.median(r["seconds"] for r in runs)
    payload = runs[0]["payload"]
    return {
        "seconds": seconds,
        "gbps": payload / seconds / 1e9,
        "rss_growth": max(r["rss_growth"] for r in runs),
        "payload": payload,
    }


def report(rows: list[dict[str, Any]]) -> str:
    """A markdown table; x = GB/s over torchft's best (of HTTP and PG) and over torchft's
    HTTP, for the same set, receivers and mode."""
    lines = [
        "| set | receivers | mode | transport | GB/s | vs torchft best | vs torchft HTTP "
        "| receiver RSS growth |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['receivers']} | {r['mode']} | {r['impl']} | "
                         f"error: {r['error'][:80]} | | | |")  # fmt: skip
            continue
        same = [
            o for o in rows
            if (o["set"], o["receivers"]) == (r["set"], r["receivers"]) and "gbps" in o
            and o["impl"].startswith("torchft") and o["mode"] == "load"
        ]  # fmt: skip
        best = max((o["gbps"] for o in same), default=None)
        http = next((o["gbps"] for o in same if o["impl"] == "torchft_http"), None)
        vs_best = f"{r['gbps'] / best:.2f}x" if best else ""
        vs_http = f"{r['gbps'] / http:.2f}x" if http else ""
        growth = f"{r['rss_growth'] / 2**20:.0f} MiB ({r['rss_growth'] / r['payload']:.2f}x)"
        lines.append(
            f"| {r['set']} | {r['receivers']} | {r['mode']} | {r['impl']} | {r['gbps']:.2f} "
            f"| {vs_best} | {vs_http} | {growth} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sets, to check the harness")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--receivers", default="1,3")
    p.add_argument("--modes", default="load,inplace")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--role", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--set", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--inplace", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        args.receivers = int(args.receivers)
        print(json.dumps(role(args)), flush=True)
        sys.stderr.flush()
        os._exit(0)  # no interpreter teardown: gloo's threads sometimes abort in it
    rows = []
    for set_name in args.sets.split(","):
        for receivers in (int(n) for n in args.receivers.split(",")):
            for mode in args.modes.split(","):
                for impl in args.impls.split(","):
                    if mode == "inplace" and impl == "torchft_http":
                        continue  # torchft's HTTP transport has no in-place receive
                    r = measure(impl, set_name, receivers, mode == "inplace", args)
                    row = {"set": set_name, "receivers": receivers, "mode": mode, "impl": impl}
                    rows.append({**row, **r})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(report(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
