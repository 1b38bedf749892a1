"""Checkpoints in an object store: S3 through s3fs against a real S3 API server on 127.0.0.1
(moto's server mode, started and stopped here), no mocks of S3 calls."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import serializer

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """storage_options for a fresh S3 API server on a free loopback port, with a bucket."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
    }
    try:
        s3fs.S3FileSystem(**options).mkdir("ckpt")
        yield options
    finally:
        server.stop()


def _state() -> dict[str, Any]:
    return {
        "w": torch.arange(12.0).reshape(3, 4),
        "i": torch.arange(5),
        "big": torch.zeros(1 << 18),
    }


def test_save_load_and_random_access_through_s3(s3: dict[str, Any]) -> None:
    url = "s3://ckpt/model.srlz"
    state = _state()
    serializer.save(state, url, storage_options=s3)
    loaded = serializer.load(url, storage_options=s3)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert serializer.read_index(url, storage_options=s3).keys() == ["w", "i", "big"]
    assert torch.equal(serializer.load_keys(url, ["i"], storage_options=s3)["i"], state["i"])
    with serializer.open(url, storage_options=s3) as f:
        assert torch.equal(f.get_tensor("w"), state["w"])
        assert torch.equal(f.get_slice("w")[1:3], state["w"][1:3])
    dest = {k: torch.zeros_like(v) for k, v in state.items()}
    serializer.load_into(dest, url, storage_options=s3)
    assert all(torch.equal(dest[k], state[k]) for k in state)


def test_a_failed_save_to_s3_leaves_the_old_object(s3: dict[str, Any]) -> None:
    url = "s3://ckpt/kept.srlz"
    serializer.save({"v": torch.ones(2)}, url, storage_options=s3)

    class Boom:
        def __reduce__(self) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        serializer.save({"v": torch.zeros(2), "z": Boom()}, url, storage_options=s3)
    assert torch.equal(serializer.load(url, storage_options=s3)["v"], torch.ones(2))


def test_a_missing_bucket_or_object_is_file_not_found(s3: dict[str, Any]) -> None:
    with pytest.raises(FileNotFoundError):
        serializer.load("s3://ckpt/nope.srlz", storage_options=s3)
    with pytest.raises(FileNotFoundError):
        serializer.load("s3://no-such-bucket/m.srlz", storage_options=s3)


def test_a_dcp_checkpoint_through_s3(s3: dict[str, Any], gloo_mesh: Any) -> None:
    import torch.distributed.checkpoint as dcp

    from serializer import distributed as sdist
    from testing.dtensors import Replicate, Shard, distribute_tensor, matrix

    sd = {"w": distribute_tensor(matrix(), gloo_mesh, [Shard(0)]), "b": torch.arange(4.0)}
    url = f"s3://ckpt/dcp-{os.getpid()}"
    dcp.save(sd, storage_writer=sdist.SerializerStorageWriter(url, storage_options=s3))
    dest = {
        "w": distribute_tensor(torch.zeros(4, 6), gloo_mesh, [Replicate()]),
        "b": torch.zeros(4),
    }
    dcp.load(dest, storage_reader=sdist.SerializerStorageReader(url, storage_options=s3))
    assert torch.equal(dest["w"].to_local(), matrix()) and torch.equal(dest["b"], sd["b"])
