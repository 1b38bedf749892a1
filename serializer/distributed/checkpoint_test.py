"""The `torch.distributed.checkpoint` storage layer: a checkpoint on one rank, resharded from
4 ranks to 2 (spawned with `testing.distributed.run_ranks`; the functions the ranks run are
module-level, so that they import them by name), and the storage layer's pickling.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import serializer
from serializer import distributed as sdist
from testing.distributed import run_ranks, single_rank_group
from testing.dtensors import Replicate, Shard, distribute_tensor, matrix


@functools.cache
def _object_collectives() -> str | None:
    """Why torch's object collectives (which DCP plans with) fail here, or None if they work:
    torch's _tensor_to_object calls .numpy(), so they need numpy, which torch does not
    require."""

    def probe() -> None:
        out: list[Any] = [None]
        dist.all_gather_object(out, 1)

    try:
        if dist.is_initialized():
            probe()
        else:
            with single_rank_group():
                probe()
    except RuntimeError as e:
        return f"torch.distributed object collectives fail here ({e}); install numpy"
    return None


def _needs_dcp() -> None:
    why = _object_collectives()
    if why is not None:
        pytest.skip(why)


def test_checkpoint_round_trip_on_one_rank(gloo_mesh, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    _needs_dcp()

    sd = {
        "w": distribute_tensor(matrix(), gloo_mesh, [Shard(0)]),
        "b": torch.arange(4.0),
        "step": 7,
    }
    dcp.save(sd, storage_writer=sdist.SerializerStorageWriter(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["__0.srlz", "metadata.srlz"]
    assert sorted(serializer.read_index(open(tmp_path / "__0.srlz", "rb")).keys()) == [
        "0", "1", "2"
    ]
    dest = {
        "w": distribute_tensor(torch.zeros(4, 6), gloo_mesh, [Replicate()]),
        "b": torch.zeros(4),
        "step": 0,
    }
    dcp.load(dest, storage_reader=sdist.SerializerStorageReader(tmp_path))
    assert torch.equal(dest["w"].to_local(), matrix())
    assert torch.equal(dest["b"], sd["b"])
    assert dest["step"] == 7


def test_storage_layer_pickles_with_its_path(tmp_path: Path) -> None:
    """DCP may pickle its storage layer (e.g. to hand it to another process): the classes
    are module-level and their state is their path (and the reader's storage index)."""
    writer = pickle.loads(pickle.dumps(sdist.SerializerStorageWriter(tmp_path)))
    assert type(writer) is sdist.SerializerStorageWriter
    assert writer.path == os.fspath(tmp_path)
    reader = pickle.loads(pickle.dumps(sdist.SerializerStorageReader(tmp_path)))
    assert type(reader) is sdist.SerializerStorageReader
    assert reader.path == os.fspath(tmp_path)
    assert pickle.loads(pickle.dumps(sdist.SerializerStorageWriter())).path is None
    assert pickle.loads(pickle.dumps(sdist.SerializerStorageReader())).path is None


def test_pickled_storage_layer_saves_and_loads(gloo_mesh, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    _needs_dcp()
    sd = {"w": distribute_tensor(matrix(), gloo_mesh, [Shard(0)]), "step": 3}
    writer = pickle.loads(pickle.dumps(sdist.SerializerStorageWriter(tmp_path)))
    dcp.save(sd, storage_writer=writer)
    reader = sdist.SerializerStorageReader(tmp_path)
    reader.set_up_storage_reader(reader.read_metadata(), True)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.path == os.fspath(tmp_path)
    assert copy.storage_data == reader.storage_data and copy.storage_data
    dest = {"w": distribute_tensor(torch.zeros(4, 6), gloo_mesh, [Shard(0)]), "step": 0}
    dcp.load(dest, storage_reader=copy)
    assert torch.equal(dest["w"].to_local(), sd["w"].to_local())
    assert dest["step"] == 3


def _one_rank_state(mesh: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    sd = {
        "w": distribute_tensor(matrix(), mesh, [Shard(0)]),
        "b": torch.arange(4.0),
        "c": torch.ones(3, dtype=torch.int64),
        "step": 7,
    }
    dest = {
        "w": distribute_tensor(torch.zeros(4, 6), mesh, [Replicate()]),
        "b": torch.zeros(4),
        "c": torch.zeros(3, dtype=torch.int64),
        "step": 0,
    }
    return sd, dest


def _check(dest: dict[str, Any], sd: dict[str, Any]) -> None:
    assert torch.equal(dest["w"].to_local(), matrix())
    assert torch.equal(dest["b"], sd["b"]) and torch.equal(dest["c"], sd["c"])
    assert dest["step"] == 7


def test_parallel_writes_with_thread_count(gloo_mesh, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    _needs_dcp()
    sd, dest = _one_rank_state(gloo_mesh)
    dcp.save(sd, storage_writer=sdist.SerializerStorageWriter(tmp_path, thread_count=3))
    assert sorted(os.listdir(tmp_path)) == [
        "__0_0.srlz", "__0_1.srlz", "__0_2.srlz", "metadata.srlz"
    ]  # fmt: skip
    dcp.load(dest, storage_reader=sdist.SerializerStorageReader(tmp_path))
    _check(dest, sd)


def test_a_url_checkpoint_goes_through_fsspec(gloo_mesh) -> None:
    """checkpoint_id="s3://bucket/ckpt" wrote to a local folder named "s3:" before."""
    import torch.distributed.checkpoint as dcp

    fsspec = pytest.importorskip("fsspec")
    _needs_dcp()
    url = f"memory://dcp-{os.getpid()}/ckpt"
    sd, dest = _one_rank_state(gloo_mesh)
    dcp.save(sd, storage_writer=sdist.SerializerStorageWriter(), checkpoint_id=url)
    memory = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[1] for p in memory.ls(url, detail=False)) == [
        "__0.srlz", "metadata.srlz"
    ]  # fmt: skip
    assert not os.path.exists("memory:")
    dcp.load(dest, storage_reader=sdist.SerializerStorageReader(), checkpoint_id=url)
    _check(dest, sd)
    memory.rm(url, recursive=True)


def test_async_save(gloo_mesh, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    _needs_dcp()
    if not hasattr(dcp, "async_save"):
        pytest.skip("this torch has no dcp.async_save")
    sd, dest = _one_rank_state(gloo_mesh)
    future = dcp.async_save(sd, storage_writer=sdist.SerializerStorageWriter(tmp_path))
    future.result(timeout=60)
    dcp.load(dest, storage_reader=sdist.SerializerStorageReader(tmp_path))
    _check(dest, sd)


def process_async_save(path: Path) -> dict[str, Any]:
    """Run by one spawned rank: dcp.async_save in torch's background checkpoint process,
    which receives the (pickled) storage writer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    sd = {"b": torch.arange(4.0), "step": 3}
    writer = sdist.SerializerStorageWriter(path)
    future = dcp.async_save(
        sd, storage_writer=writer, async_checkpointer_type=AsyncCheckpointerType.PROCESS
    )
    future.result(timeout=120)
    dest = {"b": torch.zeros(4), "step": 0}
    dcp.load(dest, storage_reader=sdist.SerializerStorageReader(path))
    return {"b": dest["b"].tolist(), "step": dest["step"], "files": sorted(os.listdir(path))}


def test_async_save_in_a_background_process(tmp_path: Path) -> None:
    try:
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
    except ImportError:
        pytest.skip("this torch has no process-based async checkpointing")
    if not hasattr(AsyncCheckpointerType, "PROCESS"):
        pytest.skip("this torch has no process-based async checkpointing")
    (result,) = run_ranks(1, process_async_save, tmp_path)
    assert result == {"b": [0.0, 1.0, 2.0, 3.0], "step": 3, "files": ["__0.srlz", "metadata.srlz"]}


# ---------------------------------------------------------------------------- many ranks


def four_rank_checkpoint(path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    mesh = init_device_mesh("cpu", (4,))
    sd = {
        "w": distribute_tensor(matrix(8, 6), mesh, [Shard(0)]),
        "odd": distribute_tensor(matrix(5, 3), mesh, [Shard(0)]),  # 2, 2, 1, 0 rows
        "b": torch.arange(4.0),
        "step": 7,
    }
    dcp.save(sd, storage_writer=sdist.SerializerStorageWriter(path))


def two_rank_checkpoint(path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    mesh = init_device_mesh("cpu", (2,))
    reader = sdist.SerializerStorageReader(path)
    for placements in ([Shard(1)], [Replicate()], [Shard(0)]):
        dest = {
            "w": distribute_tensor(torch.zeros(8, 6), mesh, placements),
            "odd": distribute_tensor(torch.zeros(5, 3), mesh, placements),
            "b": torch.zeros(4),
            "step": 0,
        }
        dcp.load(dest, storage_reader=reader)
        torch.testing.assert_close(dest["w"].full_tensor(), matrix(8, 6))
        torch.testing.assert_close(dest["odd"].full_tensor(), matrix(5, 3))
        expected = distribute_tensor(matrix(8, 6), mesh, placements).to_local()
        assert torch.equal(dest["w"].to_local(), expected)
        assert torch.equal(dest["b"], torch.arange(4.0))
        assert dest["step"] == 7


def test_reshard_checkpoint_from_four_ranks_to_two(tmp_path: Path) -> None:
    _needs_dcp()
    run_ranks(4, four_rank_checkpoint, tmp_path, timeout=150)
    assert sorted(os.listdir(tmp_path)) == [
        "__0.srlz", "__1.srlz", "__2.srlz", "__3.srlz", "metadata.srlz"
    ]
    with open(tmp_path / "metadata.srlz", "rb") as f:
        with pytest.raises(serializer.UnsafeGlobalError):  # DCP's classes are not allowed...
            serializer.load(f)
    metadata = sdist.SerializerStorageReader(tmp_path).read_metadata()  # ...but here they are
    assert sorted(metadata.state_dict_metadata) == ["b", "odd", "step", "w"]
    run_ranks(2, two_rank_checkpoint, tmp_path, timeout=150)
