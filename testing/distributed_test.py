"""The process-group harnesses themselves: one rank in process, several in subprocesses."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from testing.distributed import (
    RankFailures,
    restart_group,
    run_ranks,
    single_rank_group,
)


def test_single_rank_group_yields_a_mesh_and_cleans_up() -> None:
    with single_rank_group(mesh_dim_names=("dp",)) as mesh:
        assert dist.is_initialized()
        assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
        assert mesh.device_type == "cpu"
        assert mesh.mesh.tolist() == [0]
        assert mesh.mesh_dim_names == ("dp",)
        t = torch.ones(3)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0, 1.0]
    assert not dist.is_initialized()


def test_single_rank_group_refuses_to_nest() -> None:
    with single_rank_group():
        with pytest.raises(RuntimeError, match="already initialized"):
            with single_rank_group():
                pass
    assert not dist.is_initialized()


def test_gloo_mesh_fixture(gloo_mesh) -> None:
    assert dist.is_initialized()
    assert gloo_mesh.mesh.tolist() == [0]


# ---------------------------------------------------------------------------- run_ranks


def _collective_checks(scale: int) -> dict[str, object]:
    """Runs on every rank: collectives, point-to-point, and a restarted group."""
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank * scale)])
    dist.all_reduce(t)
    peer = (rank + 1) % world
    if rank % 2 == 0:
        dist.send(torch.tensor([rank]), peer)
    else:
        got = torch.tensor([-1])
        dist.recv(got, (rank - 1) % world)
        assert got.item() == rank - 1
    restart_group()
    u = torch.tensor([1.0])
    dist.all_reduce(u)
    return {"rank": rank, "world": world, "sum": t.item(), "after_restart": u.item(),
            "threads": os.environ.get("OMP_NUM_THREADS")}


def _fail_on_odd_ranks() -> int:
    rank = dist.get_rank()
    if rank % 2:
        raise ValueError(f"boom on rank {rank}")
    return rank


def _fail_on_rank_zero_hang_on_rank_one() -> int:
    if dist.get_rank() == 0:
        raise RuntimeError("rank 0 gives up")
    time.sleep(600)
    return 1


def test_run_ranks_returns_every_result_in_rank_order() -> None:
    results = run_ranks(2, _collective_checks, 3, timeout=60)
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["world"] == 2
        assert r["sum"] == 3.0  # 0 * 3 + 1 * 3
        assert r["after_restart"] == 2.0
        assert r["threads"] == os.environ.get("OMP_NUM_THREADS", "1")


def test_run_ranks_reports_every_failing_rank() -> None:
    with pytest.raises(RankFailures) as info:
        run_ranks(4, f"{__name__}:_fail_on_odd_ranks", timeout=60)
    assert sorted(info.value.failures) == [1, 3]
    for rank in (1, 3):
        report = info.value.failures[rank]
        assert "Traceback" in report
        assert f"ValueError: boom on rank {rank}" in report
    assert "2 of 4 ranks failed" in str(info.value)


def test_run_ranks_kills_the_ranks_left_hanging_by_a_failure() -> None:
    start = time.monotonic()
    with pytest.raises(RankFailures) as info:
        run_ranks(2, _fail_on_rank_zero_hang_on_rank_one, timeout=300, grace=2)
    assert sorted(info.value.failures) == [0, 1]
    assert "RuntimeError: rank 0 gives up" in info.value.failures[0]
    assert "killed: still running 2 s after rank 0 failed" in info.value.failures[1]
    assert time.monotonic() - start < 120


def test_run_ranks_needs_an_importable_function() -> None:
    with pytest.raises(ValueError, match="module level"):
        run_ranks(2, lambda: None)
