"""DTensor streams, resharding checkpoints and transfers, on real gloo process groups.

Single-rank tests run in this process (`gloo_mesh`); multi-rank ones spawn 2 or 4 CPU ranks
with `testing.distributed.run_ranks`, several checks per spawn (each rank imports torch).
"""

from __future__ import annotations

import functools
import io
import os
import pickletools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import serializer
from serializer import _format
from serializer import distributed as sdist
from serializer.distributed import _dtensor_spec, dtensor
from testing.distributed import (
    restart_group,
    run_ranks,
    single_rank_group,
)

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
except ImportError:  # torch 2.4
    from torch.distributed._tensor import (  # type: ignore[no-redef]
        DTensor,
        Partial,
        Replicate,
        Shard,
        distribute_tensor,
    )
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

try:
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:
    _StridedShard = None


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


def _roundtrip(obj: Any, **load_args: Any) -> Any:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    result = serializer.load(buf, **load_args)
    assert buf.tell() == len(buf.getvalue())
    return result


def _assert_same_dtensor(result: Any, expected: Any) -> None:
    assert type(result) is type(expected)
    torch.testing.assert_close(result.to_local(), expected.to_local(), rtol=0, atol=0)
    assert result._spec == expected._spec
    assert result.requires_grad == expected.requires_grad


def _full(rows: int = 4, cols: int = 6) -> torch.Tensor:
    return torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols)


# ---------------------------------------------------------------------------- one rank

PLACEMENTS = {
    "shard0": lambda: [Shard(0)],
    "shard1": lambda: [Shard(1)],
    "replicate": lambda: [Replicate()],
    "partial_sum": lambda: [Partial()],
    "partial_max": lambda: [Partial("max")],
}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_round_trip_keeps_local_shard_and_spec(gloo_mesh, placement: str) -> None:
    placements = PLACEMENTS[placement]()
    if placement.startswith("partial"):
        dtensor = DTensor.from_local(_full(), gloo_mesh, placements)
    else:
        dtensor = distribute_tensor(_full(), gloo_mesh, placements)
    result = _roundtrip({"w": dtensor})["w"]  # weights_only=True, nothing allowlisted
    # What PyTorch's test/distributed/test_serialization.py asserts:
    torch.testing.assert_close(result.to_local(), dtensor.to_local())
    assert result._spec == dtensor._spec
    _assert_same_dtensor(result, dtensor)
    assert result.placements == tuple(placements)


@pytest.mark.skipif(_StridedShard is None, reason="this torch has no _StridedShard")
def test_strided_shard_round_trip(gloo_mesh) -> None:
    spec_type = type(distribute_tensor(_full(), gloo_mesh, [Shard(0)])._spec)
    local = _full()
    spec = spec_type(
        gloo_mesh,
        (_StridedShard(0, split_factor=2),),
        tensor_meta=distribute_tensor(local, gloo_mesh, [Shard(0)])._spec.tensor_meta,
    )
    dtensor = DTensor(local, spec, requires_grad=False)
    _assert_same_dtensor(_roundtrip(dtensor), dtensor)


def test_round_trip_over_every_transport(gloo_mesh, transport) -> None:
    sd = {
        "w": distribute_tensor(_full(), gloo_mesh, [Shard(0)]),
        "b": torch.arange(3.0),
        "nested": [distribute_tensor(_full(2, 3), gloo_mesh, [Replicate()])],
    }
    result = transport(sd, serializer.load)
    _assert_same_dtensor(result["w"], sd["w"])
    _assert_same_dtensor(result["nested"][0], sd["nested"][0])
    assert torch.equal(result["b"], sd["b"])


def test_parameters_requires_grad_and_shared_storage(gloo_mesh) -> None:
    w = distribute_tensor(_full(), gloo_mesh, [Shard(0)])
    param = torch.nn.Parameter(distribute_tensor(_full(), gloo_mesh, [Replicate()]))
    grad = distribute_tensor(_full(), gloo_mesh, [Shard(1)]).requires_grad_()
    result = _roundtrip({"w": w, "p": param, "g": grad, "w_again": w})
    assert isinstance(result["p"], torch.nn.Parameter) and result["p"].requires_grad
    assert isinstance(result["p"], DTensor)
    _assert_same_dtensor(result["p"], param)
    _assert_same_dtensor(result["g"], grad)
    assert not isinstance(result["w"], torch.nn.Parameter)
    local = result["w"].to_local()
    assert local.untyped_storage().data_ptr() == result["w_again"].to_local().untyped_storage(
    ).data_ptr()


def test_stream_names_no_torch_class_and_only_one_global(gloo_mesh) -> None:
    buf = io.BytesIO()
    serializer.save({"w": distribute_tensor(_full(), gloo_mesh, [Shard(0)])}, buf)
    data = buf.getvalue()
    pre = _format.unpack_preamble(data[: _format.PREAMBLE_SIZE])
    start = (
        _format.PREAMBLE_SIZE
        + pre.storage_count * _format.STORAGE_ENTRY_SIZE
        + pre.tensor_table_len
    )
    skeleton = data[start : start + pre.skeleton_len]
    for private in (b"DTensorSpec", b"DeviceMesh", b"TensorMeta", b"placement_types", b"Shard"):
        assert private not in skeleton
    # The skeleton calls exactly one global: this module's rebuild function.
    globals_ = {arg for op, arg, _ in pickletools.genops(skeleton) if op.name == "GLOBAL"}
    assert globals_ == {"serializer.backends.distributed _rebuild_dtensor"}
    assert dtensor.CODEC.safe_globals == {
        "serializer.backends.distributed._rebuild_dtensor": dtensor._rebuild_dtensor
    }


def test_weights_only_false_loads_the_same(gloo_mesh) -> None:
    dtensor = distribute_tensor(_full(), gloo_mesh, [Shard(1)])
    _assert_same_dtensor(_roundtrip(dtensor, weights_only=False), dtensor)


def test_read_index_load_keys_and_load_into(gloo_mesh) -> None:
    sd = {
        "w": distribute_tensor(_full(), gloo_mesh, [Shard(0)]),
        "r": distribute_tensor(_full(2, 2), gloo_mesh, [Replicate()]),
        "b": torch.ones(5),
    }
    buf = io.BytesIO()
    serializer.save(sd, buf)

    buf.seek(0)
    index = serializer.read_index(buf)
    assert sorted(index.keys()) == ["b", "r", "w"]
    assert index["w"].shape == tuple(sd["w"].to_local().shape)
    assert index["w"].dtype == torch.float32

    buf.seek(0)
    picked = serializer.load_keys(buf, ["w"])
    assert list(picked) == ["w"]
    _assert_same_dtensor(picked["w"], sd["w"])

    dest = {
        "w": distribute_tensor(torch.zeros(4, 6), gloo_mesh, [Shard(0)]),
        "r": torch.zeros(2, 2),  # a DTensor in the stream loads into a plain tensor too
        "b": torch.zeros(5),
    }
    ptr = dest["w"].to_local().data_ptr()
    buf.seek(0)
    assert serializer.load_into(dest, buf) == serializer.LoadResult([], [])
    assert dest["w"].to_local().data_ptr() == ptr
    assert torch.equal(dest["w"].to_local(), sd["w"].to_local())
    assert torch.equal(dest["r"], sd["r"].to_local())
    assert torch.equal(dest["b"], sd["b"])

    dest["w"] = distribute_tensor(torch.zeros(4, 5), gloo_mesh, [Shard(0)])
    buf.seek(0)
    with pytest.raises(serializer.MismatchError, match="'w'"):
        serializer.load_into(dest, buf)


def test_mesh_is_rebuilt_from_the_stream_in_a_new_group() -> None:
    with single_rank_group(mesh_dim_names=("dp",)) as mesh:
        sd = {
            "w": distribute_tensor(_full(), mesh, [Shard(0)]),
            "p": DTensor.from_local(_full(), mesh, [Partial("avg")]),
        }
        buf = io.BytesIO()
        serializer.save(sd, buf)
    with single_rank_group():  # a new group: the saved mesh is not reused
        buf.seek(0)
        result = serializer.load(buf)
        assert result["w"].device_mesh is not mesh
        assert result["w"].device_mesh is result["p"].device_mesh  # one mesh per state dict
        assert result["w"].device_mesh.mesh_dim_names == ("dp",)
        _assert_same_dtensor(result["w"], sd["w"])
        _assert_same_dtensor(result["p"], sd["p"])


def test_no_process_group_is_a_topology_error_and_local_shards_loads_anyway() -> None:
    with single_rank_group() as mesh:
        dtensor = distribute_tensor(_full(), mesh, [Shard(0)])
        buf = io.BytesIO()
        serializer.save({"w": dtensor, "b": torch.ones(2)}, buf)
    for weights_only in (True, False):
        buf.seek(0)
        with pytest.raises(sdist.TopologyError, match="initialized default process group"):
            serializer.load(buf, weights_only=weights_only)
    assert issubclass(sdist.TopologyError, serializer.DeviceError)
    buf.seek(0)
    with sdist.local_shards():
        result = serializer.load(buf)
    assert type(result["w"]) is torch.Tensor
    assert torch.equal(result["w"], dtensor.to_local())
    buf.seek(0)
    assert serializer.read_index(buf).keys() == ["w", "b"]  # the outline needs no group


class _Forged:
    """Pickles as a DTensor reduction with a spec of our choosing."""

    def __init__(self, meta: Any) -> None:
        self.meta = meta

    def __reduce__(self) -> Any:
        return (dtensor._rebuild_dtensor, (torch.zeros(2), self.meta))


def _good_meta() -> dict[str, Any]:
    return {
        "version": 1,
        "mesh": {"device_type": "cpu", "ranks": [0], "dim_names": None},
        "placements": (("replicate",),),
        "shape": (2,),
        "stride": (1,),
        "requires_grad": False,
        "parameter": False,
        "rank": 0,
        "world_size": 1,
        "coordinate": (0,),
    }


FORGERIES: dict[str, tuple[Any, str]] = {
    "newer": ({"version": 2}, "newer than this reader"),
    "not_a_dict": ([1], "not a dict"),
    "no_mesh": ({"mesh": None}, "mesh is malformed"),
    "ragged_ranks": (
        {"mesh": {"device_type": "cpu", "ranks": [[0], [1, 2]], "dim_names": None}},
        "not rectangular",
    ),
    "placements_vs_mesh": ({"placements": ()}, "0 placements for a mesh of 1 dims"),
    "unknown_placement": ({"placements": (("spread", 0),)}, "unknown DTensor placement"),
    "shard_out_of_range": ({"placements": (("shard", 3),)}, "shards a dim"),
    "bad_shape": ({"shape": (-1,)}, "shape"),
    "bad_flag": ({"requires_grad": 1}, "requires_grad"),
    "missing_key": ({"stride": KeyError}, "lacks 'stride'"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_malformed_spec_is_a_format_error(gloo_mesh, name: str) -> None:
    change, message = FORGERIES[name]
    meta = change
    if isinstance(change, dict):
        meta = {**_good_meta(), **change}
        meta = {k: v for k, v in meta.items() if v is not KeyError}
    buf = io.BytesIO()
    serializer.save({"w": _Forged(meta)}, buf)
    buf.seek(0)
    with pytest.raises(serializer.FormatError, match=message):
        serializer.load(buf)
    buf.seek(0)
    serializer.read_index(buf)  # the outline never reads the spec


def test_forged_spec_that_is_well_formed_loads(gloo_mesh) -> None:
    buf = io.BytesIO()
    serializer.save({"w": _Forged(_good_meta())}, buf)
    buf.seek(0)
    result = serializer.load(buf)["w"]
    assert isinstance(result, DTensor) and result.placements == (Replicate(),)


def test_unsupported_placement_is_refused_on_save() -> None:
    with pytest.raises(serializer.UnsupportedError, match="placement"):
        _dtensor_spec.encode_placement(object())


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_on_one_rank(gloo_mesh, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    _needs_dcp()

    sd = {
        "w": distribute_tensor(_full(), gloo_mesh, [Shard(0)]),
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
    assert torch.equal(dest["w"].to_local(), _full())
    assert torch.equal(dest["b"], sd["b"])
    assert dest["step"] == 7


# ---------------------------------------------------------------------------- many ranks


def _stream(path: Path, rank: int) -> Path:
    return path / f"rank{rank}.srlz"


def _four_rank_state(rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deterministic DTensors on 1-D, 2-D, sliced, permuted and flattened meshes."""
    full = _full(5, 6)  # 5 rows over 4 ranks: shards of 2, 2, 1, 0 rows
    mesh1 = init_device_mesh("cpu", (4,))
    mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    permuted = DeviceMesh("cpu", [[0, 2], [1, 3]], mesh_dim_names=("a", "b"))
    sd: dict[str, Any] = {
        "shard0": distribute_tensor(full, mesh1, [Shard(0)]),
        "shard1": distribute_tensor(full, mesh1, [Shard(1)]),
        "rep": distribute_tensor(full, mesh1, [Replicate()]),
        "partial": DTensor.from_local(full * (rank + 1), mesh1, [Partial()], run_check=False),
        "2d": distribute_tensor(full, mesh2, [Shard(0), Shard(1)]),
        "2d_rs": distribute_tensor(full, mesh2, [Replicate(), Shard(0)]),
        "tp": distribute_tensor(full, mesh2["tp"], [Shard(1)]),
        "dp": distribute_tensor(full, mesh2["dp"], [Shard(0)]),
        "permuted": distribute_tensor(full, permuted, [Shard(0), Replicate()]),
        "plain": torch.full((3,), float(rank)),
    }
    if hasattr(mesh2, "_flatten"):  # torch >= 2.5
        sd["flat"] = distribute_tensor(full, mesh2._flatten("dp_tp"), [Shard(1)])
    expected_full = {k: full for k in sd if k not in ("partial", "plain")}
    expected_full["partial"] = full * 10
    return sd, expected_full


def _check_against(result: dict[str, Any], sd: dict[str, Any], full: dict[str, Any]) -> None:
    assert sorted(result) == sorted(sd)
    for key, value in sd.items():
        if isinstance(value, DTensor):
            _assert_same_dtensor(result[key], value)
            torch.testing.assert_close(result[key].full_tensor(), full[key])
        else:
            assert torch.equal(result[key], value)


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
            _assert_same_dtensor(got["rep"], sd["rep"])  # a Replicate shard loads on any rank

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


def four_rank_checks(path: Path) -> dict[str, Any]:
    rank = dist.get_rank()
    sd, full = _four_rank_state(rank)
    with open(_stream(path, rank), "wb") as f:
        serializer.save(sd, f)
    dist.barrier()

    # 1. Each rank loads its own stream (the meshes it saved with are reused).
    with open(_stream(path, rank), "rb") as f:
        result = serializer.load(f)
    _check_against(result, sd, full)
    assert result["2d"].device_mesh is sd["2d"].device_mesh
    with open(_stream(path, rank), "rb") as f:
        assert sorted(serializer.read_index(f).keys()) == sorted(sd)

    # 2. A new group, as in a new process: the meshes are rebuilt from the streams.
    restart_group()
    with open(_stream(path, rank), "rb") as f:
        result = serializer.load(f)
    _check_against(result, sd, full)
    assert result["2d"].device_mesh is not sd["2d"].device_mesh
    assert result["tp"].device_mesh == sd["tp"].device_mesh

    # 3. Another rank's stream: what is replicated where the ranks differ loads, the rest not.
    other = rank ^ 2  # same "tp" coordinate, other "dp" coordinate
    with open(_stream(path, other), "rb") as f:
        mine = serializer.load_keys(f, ["rep", "2d_rs", "tp"])
    _assert_same_dtensor(mine["rep"], sd["rep"])
    _assert_same_dtensor(mine["2d_rs"], sd["2d_rs"])
    _assert_same_dtensor(mine["tp"], sd["tp"])
    for key in ("shard0", "2d", "dp", "partial"):
        with open(_stream(path, other), "rb") as f:
            with pytest.raises(sdist.TopologyError, match="coordinate"):
                serializer.load_keys(f, [key])

    # 4. Transfers between pairs of ranks.
    _transfer_pairs(rank, sd)
    return {"rank": rank, "local_rows": sd["shard0"].to_local().shape[0]}


def two_rank_checks(path: Path) -> None:
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))

    # 1. A stream of the 4-rank world does not load in this world of 2, even replicated.
    for key in ("rep", "shard0", "2d"):
        with open(_stream(path, rank), "rb") as f:
            with pytest.raises(sdist.TopologyError, match="world of 4 ranks.*world of 2"):
                serializer.load_keys(f, [key])
    with open(_stream(path, rank), "rb") as f:  # the outline still reads
        assert "2d" in serializer.read_index(f).keys()

    # 2. Uneven shards (5 rows over 2 ranks), reloaded in a new group.
    sd = {"w": distribute_tensor(_full(5, 2), mesh, [Shard(0)])}
    buf = io.BytesIO()
    serializer.save(sd, buf)
    restart_group()
    buf.seek(0)
    result = serializer.load(buf)
    _assert_same_dtensor(result["w"], sd["w"])
    assert result["w"].to_local().shape[0] == (3, 2)[rank]
    torch.testing.assert_close(result["w"].full_tensor(), _full(5, 2))

    # 3. A transfer much larger than its chunks, received in place.
    big = {"x": torch.randn(256, 256, generator=torch.Generator().manual_seed(5))}
    if rank == 0:
        sdist.send_state_dict(big, 1, chunk_bytes=4096)
    else:
        dest = {"x": torch.zeros(256, 256)}
        sdist.recv_state_dict_into(dest, 0, chunk_bytes=4096)
        assert torch.equal(dest["x"], big["x"])


def test_four_ranks_then_two(tmp_path: Path) -> None:
    results = run_ranks(4, four_rank_checks, tmp_path, timeout=150)
    assert [r["local_rows"] for r in results] == [2, 2, 1, 0]
    run_ranks(2, two_rank_checks, tmp_path, timeout=150)


def four_rank_checkpoint(path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    mesh = init_device_mesh("cpu", (4,))
    sd = {
        "w": distribute_tensor(_full(8, 6), mesh, [Shard(0)]),
        "odd": distribute_tensor(_full(5, 3), mesh, [Shard(0)]),  # 2, 2, 1, 0 rows
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
        torch.testing.assert_close(dest["w"].full_tensor(), _full(8, 6))
        torch.testing.assert_close(dest["odd"].full_tensor(), _full(5, 3))
        expected = distribute_tensor(_full(8, 6), mesh, placements).to_local()
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
