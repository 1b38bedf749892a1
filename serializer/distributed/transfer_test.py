"""Transfers of state dicts between ranks of a real gloo process group: whole objects, in
place, failing and aborted sends, chunks much smaller than the stream.

One spawn of 4 CPU ranks (`testing.distributed.run_ranks`) in pairs 0-1 and 2-3, both pairs
at once; its functions are module-level, so that the ranks import them by name.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import serializer
from serializer import distributed as sdist
from testing.distributed import run_ranks
from testing.dtensors import DTensor, Replicate, assert_same_dtensor, distribute_tensor, matrix


def _transfer_pairs(rank: int, sd: dict[str, Any]) -> None:
    """0 -> 1 and 2 -> 3, then back: whole-object, in-place, failing and aborted transfers."""
    peer = rank ^ 1
    mesh1 = sd["rep"].device_mesh
    payload = {
        "rep": sd["rep"],
        "w": torch.arange(1000, dtype=torch.float64) + rank,
        "nested": {"i": torch.tensor([rank], dtype=torch.int64)},
    }
    expected_stream = io.BytesIO()
    serializer.save(payload, expected_stream)
    for sender in (0, 1):
        if rank % 2 == sender:
            sent = sdist.send_state_dict(payload, peer, chunk_bytes=1000)
            assert sent == len(expected_stream.getvalue())
            sdist.send_state_dict(payload, peer, chunk_bytes=1000)
            sdist.send_state_dict(payload, peer, chunk_bytes=1000)
            with pytest.raises(serializer.UnsupportedError):
                sdist.send_state_dict({"bad": torch.ones(2).to_sparse()}, peer, chunk_bytes=1000)
            sdist.send_state_dict(payload, peer, chunk_bytes=1000)
        else:
            got = sdist.recv_state_dict(peer, chunk_bytes=1000)
            assert torch.equal(got["w"], torch.arange(1000, dtype=torch.float64) + peer)
            assert got["nested"]["i"].item() == peer
            assert_same_dtensor(got["rep"], sd["rep"])  # a Replicate shard loads on any rank

            dest = {
                "rep": DTensor.from_local(torch.zeros(5, 6), mesh1, [Replicate()], run_check=False),
                "w": torch.zeros(1000, dtype=torch.float64),
                "nested": {"i": torch.zeros(1, dtype=torch.int64)},
            }
            pointers = [dest["rep"].to_local().data_ptr(), dest["w"].data_ptr()]
            result = sdist.recv_state_dict_into(dest, peer, chunk_bytes=1000)
            assert result == serializer.LoadResult([], [])
            assert pointers == [dest["rep"].to_local().data_ptr(), dest["w"].data_ptr()]
            assert torch.equal(dest["w"], torch.arange(1000, dtype=torch.float64) + peer)
            assert dest["nested"]["i"].item() == peer
            assert torch.equal(dest["rep"].to_local(), sd["rep"].to_local())

            wrong = {**dest, "w": torch.zeros(999, dtype=torch.float64)}
            with pytest.raises(serializer.MismatchError):
                sdist.recv_state_dict_into(wrong, peer, chunk_bytes=1000)  # drains the stream
            with pytest.raises(sdist.TransferError, match=f"rank {peer} failed"):
                sdist.recv_state_dict(peer, chunk_bytes=1000)
            again = sdist.recv_state_dict(peer, chunk_bytes=1000)  # still in step
            assert torch.equal(again["w"], torch.arange(1000, dtype=torch.float64) + peer)


def _transfer_larger_than_its_chunks(rank: int) -> None:
    """A transfer much larger than its chunks, received in place: 0 -> 1 and 2 -> 3."""
    big = {"x": torch.randn(256, 256, generator=torch.Generator().manual_seed(5))}
    if rank % 2 == 0:
        sdist.send_state_dict(big, rank + 1, chunk_bytes=4096)
    else:
        dest = {"x": torch.zeros(256, 256)}
        sdist.recv_state_dict_into(dest, rank - 1, chunk_bytes=4096)
        assert torch.equal(dest["x"], big["x"])


def four_rank_transfers() -> int:
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (4,))
    sd = {"rep": distribute_tensor(matrix(5, 6), mesh, [Replicate()])}
    _transfer_pairs(rank, sd)
    _transfer_larger_than_its_chunks(rank)
    return rank


def test_transfers_between_pairs_of_ranks() -> None:
    assert run_ranks(4, four_rank_transfers, timeout=150) == [0, 1, 2, 3]
