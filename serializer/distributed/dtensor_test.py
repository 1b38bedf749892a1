"""DTensor streams on real gloo process groups: round trips of every placement, forged specs,
`local_shards`, and the topology checks of loading on other ranks and worlds.

Single-rank tests run in this process (`gloo_mesh`); multi-rank ones spawn 4 and then 2 CPU
ranks with `testing.distributed.run_ranks`, several checks per spawn (each rank imports torch):
their functions are module-level, so that the ranks import them by name.
"""

from __future__ import annotations

import io
import pickletools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

import serializer
from serializer import _format
from serializer import distributed as sdist
from serializer.distributed import _dtensor_spec, dtensor
from testing.distributed import restart_group, run_ranks, single_rank_group
from testing.dtensors import (
    DTensor,
    Partial,
    Replicate,
    Shard,
    StridedShard,
    assert_same_dtensor,
    distribute_tensor,
    matrix,
)


def _roundtrip(obj: Any, **load_args: Any) -> Any:
    buf = io.BytesIO()
    serializer.save(obj, buf)
    buf.seek(0)
    result = serializer.load(buf, **load_args)
    assert buf.tell() == len(buf.getvalue())
    return result


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
        dtensor = DTensor.from_local(matrix(), gloo_mesh, placements)
    else:
        dtensor = distribute_tensor(matrix(), gloo_mesh, placements)
    result = _roundtrip({"w": dtensor})["w"]  # weights_only=True, nothing allowlisted
    # What PyTorch's test/distributed/test_serialization.py asserts:
    torch.testing.assert_close(result.to_local(), dtensor.to_local())
    assert result._spec == dtensor._spec
    assert_same_dtensor(result, dtensor)
    assert result.placements == tuple(placements)


@pytest.mark.skipif(StridedShard is None, reason="this torch has no StridedShard")
def test_strided_shard_round_trip(gloo_mesh) -> None:
    spec_type = type(distribute_tensor(matrix(), gloo_mesh, [Shard(0)])._spec)
    local = matrix()
    spec = spec_type(
        gloo_mesh,
        (StridedShard(0, split_factor=2),),
        tensor_meta=distribute_tensor(local, gloo_mesh, [Shard(0)])._spec.tensor_meta,
    )
    dtensor = DTensor(local, spec, requires_grad=False)
    assert_same_dtensor(_roundtrip(dtensor), dtensor)


def test_round_trip_over_every_transport(gloo_mesh, transport) -> None:
    sd = {
        "w": distribute_tensor(matrix(), gloo_mesh, [Shard(0)]),
        "b": torch.arange(3.0),
        "nested": [distribute_tensor(matrix(2, 3), gloo_mesh, [Replicate()])],
    }
    result = transport(sd, serializer.load)
    assert_same_dtensor(result["w"], sd["w"])
    assert_same_dtensor(result["nested"][0], sd["nested"][0])
    assert torch.equal(result["b"], sd["b"])


def test_parameters_requires_grad_and_shared_storage(gloo_mesh) -> None:
    w = distribute_tensor(matrix(), gloo_mesh, [Shard(0)])
    param = torch.nn.Parameter(distribute_tensor(matrix(), gloo_mesh, [Replicate()]))
    grad = distribute_tensor(matrix(), gloo_mesh, [Shard(1)]).requires_grad_()
    result = _roundtrip({"w": w, "p": param, "g": grad, "w_again": w})
    assert isinstance(result["p"], torch.nn.Parameter) and result["p"].requires_grad
    assert isinstance(result["p"], DTensor)
    assert_same_dtensor(result["p"], param)
    assert_same_dtensor(result["g"], grad)
    assert not isinstance(result["w"], torch.nn.Parameter)
    local = result["w"].to_local()
    assert local.untyped_storage().data_ptr() == result["w_again"].to_local().untyped_storage(
    ).data_ptr()


def test_stream_names_no_torch_class_and_only_one_global(gloo_mesh) -> None:
    buf = io.BytesIO()
    serializer.save({"w": distribute_tensor(matrix(), gloo_mesh, [Shard(0)])}, buf)
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
    dtensor = distribute_tensor(matrix(), gloo_mesh, [Shard(1)])
    assert_same_dtensor(_roundtrip(dtensor, weights_only=False), dtensor)


def test_read_index_load_keys_and_load_into(gloo_mesh) -> None:
    sd = {
        "w": distribute_tensor(matrix(), gloo_mesh, [Shard(0)]),
        "r": distribute_tensor(matrix(2, 2), gloo_mesh, [Replicate()]),
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
    assert_same_dtensor(picked["w"], sd["w"])

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
            "w": distribute_tensor(matrix(), mesh, [Shard(0)]),
            "p": DTensor.from_local(matrix(), mesh, [Partial("avg")]),
        }
        buf = io.BytesIO()
        serializer.save(sd, buf)
    with single_rank_group():  # a new group: the saved mesh is not reused
        buf.seek(0)
        result = serializer.load(buf)
        assert result["w"].device_mesh is not mesh
        assert result["w"].device_mesh is result["p"].device_mesh  # one mesh per state dict
        assert result["w"].device_mesh.mesh_dim_names == ("dp",)
        assert_same_dtensor(result["w"], sd["w"])
        assert_same_dtensor(result["p"], sd["p"])


def test_no_process_group_is_a_topology_error_and_local_shards_loads_anyway() -> None:
    with single_rank_group() as mesh:
        dtensor = distribute_tensor(matrix(), mesh, [Shard(0)])
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


# ---------------------------------------------------------------------------- many ranks


def _stream(path: Path, rank: int) -> Path:
    return path / f"rank{rank}.srlz"


def _four_rank_state(rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deterministic DTensors on 1-D, 2-D, sliced, permuted and flattened meshes."""
    full = matrix(5, 6)  # 5 rows over 4 ranks: shards of 2, 2, 1, 0 rows
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
            assert_same_dtensor(result[key], value)
            torch.testing.assert_close(result[key].full_tensor(), full[key])
        else:
            assert torch.equal(result[key], value)


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
    assert_same_dtensor(mine["rep"], sd["rep"])
    assert_same_dtensor(mine["2d_rs"], sd["2d_rs"])
    assert_same_dtensor(mine["tp"], sd["tp"])
    for key in ("shard0", "2d", "dp", "partial"):
        with open(_stream(path, other), "rb") as f:
            with pytest.raises(sdist.TopologyError, match="coordinate"):
                serializer.load_keys(f, [key])

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
    sd = {"w": distribute_tensor(matrix(5, 2), mesh, [Shard(0)])}
    buf = io.BytesIO()
    serializer.save(sd, buf)
    restart_group()
    buf.seek(0)
    result = serializer.load(buf)
    assert_same_dtensor(result["w"], sd["w"])
    assert result["w"].to_local().shape[0] == (3, 2)[rank]
    torch.testing.assert_close(result["w"].full_tensor(), matrix(5, 2))


def test_four_ranks_then_two(tmp_path: Path) -> None:
    results = run_ranks(4, four_rank_checks, tmp_path, timeout=150)
    assert [r["local_rows"] for r in results] == [2, 2, 1, 0]
    run_ranks(2, two_rank_checks, tmp_path, timeout=150)
