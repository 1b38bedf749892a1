"""torchft's own contract for checkpoint transports, run against ours: its
`run_multi_recovery_test` (three ranks as threads, one default gloo group: 1 -> 2 ranks,
1 -> 1 rank, a receive that times out, a send to a rank that never receives), for
`HTTPTransport` unchunked, chunked and in place, and `PGTransport` over torchft's
`ProcessGroupGloo`, whole and in place.

The harness initializes the default process group and leaves it behind if it fails, so each
run is a process of its own: ``python -m serializer.transports.contract_test KIND``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from datetime import timedelta
from typing import Any

import pytest

KINDS = ["http", "http-chunked", "http-inplace", "pg", "pg-inplace"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("kind", KINDS)
def test_torchft_multi_recovery(kind: str) -> None:
    pytest.importorskip("torchft.checkpointing.transport_test")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "serializer.transports.contract_test", kind],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert f"contract passed: {kind}" in run.stdout


def _run(kind: str) -> None:
    import torch
    from torch.distributed import TCPStore
    from torchft.checkpointing.transport_test import make_state_dict, run_multi_recovery_test
    from torchft.process_group import ProcessGroupGloo

    from serializer.transports import CheckpointTransport, HTTPTransport, PGTransport

    device = torch.device("cpu")
    timeout = timedelta(seconds=10)
    inplace = kind.endswith("-inplace")

    def state_dict() -> Any:
        return make_state_dict(device)

    store = TCPStore(host_name="localhost", port=0, is_master=True, wait_for_workers=False)

    def init(rank: int, world_size: int) -> CheckpointTransport[Any]:
        transport: CheckpointTransport[Any]
        if kind.startswith("http"):
            transport = HTTPTransport(
                timeout,
                num_chunks=3 if kind == "http-chunked" else 0,
                state_dict=state_dict if inplace else None,
            )
        else:
            pg = ProcessGroupGloo()
            pg.configure(
                store_addr=f"localhost:{store.port}/prefix",
                replica_id="0",
                rank=rank,
                world_size=world_size,
            )
            transport = PGTransport(
                pg, timeout, device=device, state_dict=state_dict if inplace else None
            )
        from torchft.checkpointing.transport import CheckpointTransport as TorchftTransport

        assert isinstance(transport, TorchftTransport)
        return transport

    run_multi_recovery_test(unittest.TestCase(), init, device)
    print(f"contract passed: {kind}", flush=True)


if __name__ == "__main__":
    _run(sys.argv[1])
