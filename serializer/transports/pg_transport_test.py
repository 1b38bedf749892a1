"""`PGTransport` over real gloo process groups (ranks as threads of this process, each with
its own `ProcessGroupGloo` on one store; a subprocess for the dying peer): one sender to
three receivers, in place, every catalog case bit for bit, step mismatches, timeouts on
both sides, hostile and dying peers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist

import serializer
from serializer.transports import (
    PGTransport,
    StepMismatchError,
    TransportError,
    TransportTimeoutError,
)
from serializer.transports.pg_transport import _TAG, PROTOCOL
from testing import forge
from testing.cases import Case, assert_same

T10 = timedelta(seconds=10)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_names = itertools.count()


def groups(n: int) -> list[Any]:
    """`n` ranks of a fresh gloo group, one object per rank (for threads of this process)."""
    store = dist.PrefixStore(f"g{next(_names)}", dist.HashStore())

    def make(rank: int) -> Any:
        return dist.ProcessGroupGloo(store, rank, n, timedelta(seconds=30))

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(make, range(n)))


def send(t: PGTransport[Any], dst_ranks: list[int], step: int, sd: Any) -> None:
    """send_checkpoint, then disallow_checkpoint: waits for the send and raises its error."""
    t.send_checkpoint(dst_ranks, step, sd, T10)
    t.disallow_checkpoint()


def on_ranks(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run one function per rank in threads; the results in rank order."""
    with ThreadPoolExecutor(len(fns)) as pool:
        futures = [pool.submit(fn) for fn in fns]
        return [f.result(timeout=60) for f in futures]


@pytest.fixture(scope="module")
def pair() -> list[Any]:
    return groups(2)


def _state() -> dict[str, Any]:
    return {
        "layers": [{"w": torch.randn(50, 40), "b": torch.randn(40)} for _ in range(3)],
        "emb": torch.arange(100_000, dtype=torch.int32),
        "opt": {"step": 7, "lr": 0.1, "betas": (0.9, 0.99)},
        "name": "model",
    }


def test_one_sender_three_receivers() -> None:
    pgs = groups(4)
    sd = _state()
    sender = PGTransport[Any](pgs[0], T10, "cpu", chunk_bytes=4096)
    receivers = [PGTransport[Any](pg, T10, "cpu", chunk_bytes=4096) for pg in pgs[1:]]
    got = on_ranks(
        [lambda: send(sender, [1, 2, 3], 5, sd)]
        + [lambda r=r: r.recv_checkpoint(0, sender.metadata(), 5, T10) for r in receivers]
    )
    for g in got[1:]:
        assert_same(g, sd)


def test_in_place(pair: list[Any]) -> None:
    sd = _state()
    dest = _state()
    for layer in dest["layers"]:
        layer["w"].zero_()
    pointers = [layer["w"].data_ptr() for layer in dest["layers"]]
    sender = PGTransport[Any](pair[0], T10, "cpu", chunk_bytes=1 << 16)
    receiver = PGTransport[Any](pair[1], T10, "cpu", state_dict=lambda: dest, chunk_bytes=1 << 16)
    _, got = on_ranks(
        [
            lambda: send(sender, [1], 1, sd),
            lambda: receiver.recv_checkpoint(0, "<n/a>", 1, T10),
        ]
    )
    assert_same(got, sd)
    assert [layer["w"].data_ptr() for layer in dest["layers"]] == pointers
    assert got["layers"][0]["w"] is dest["layers"][0]["w"]
    assert torch.equal(dest["layers"][2]["w"], sd["layers"][2]["w"])


def test_catalog_bit_exact(case: Case, pair: list[Any]) -> None:
    """Every dtype and layout of the shared catalog (the `case` fixture)."""
    if not case.weights_only:
        pytest.skip("loads only with weights_only=False")
    obj = case.build("cpu")
    sender = PGTransport[Any](pair[0], T10, "cpu", chunk_bytes=1 << 16)
    receiver = PGTransport[Any](pair[1], T10, "cpu", chunk_bytes=1 << 16)
    _, got = on_ranks(
        [
            lambda: send(sender, [1], 3, obj),
            lambda: receiver.recv_checkpoint(0, "<n/a>", 3, T10),
        ]
    )
    assert_same(got, obj)


def test_step_mismatch_takes_the_stream_and_raises(pair: list[Any]) -> None:
    sender = PGTransport[Any](pair[0], T10, "cpu", chunk_bytes=1000)
    receiver = PGTransport[Any](pair[1], T10, "cpu", chunk_bytes=1000)
    sd = _state()
    sent = []

    def send_step_2() -> None:
        send(sender, [1], 2, sd)
        sent.append(True)

    def recv() -> None:
        with pytest.raises(StepMismatchError, match="sent step 2, not step 3"):
            receiver.recv_checkpoint(0, "<n/a>", 3, T10)

    on_ranks([send_step_2, recv])
    assert sent == [True]  # the receiver took the rest: the sender did not wait for it
    # the pair still works
    _, got = on_ranks(
        [
            lambda: send(sender, [1], 4, sd),
            lambda: receiver.recv_checkpoint(0, "", 4, T10),
        ]
    )
    assert_same(got, sd)


def test_timeouts() -> None:
    """A receive from a rank that sends nothing, and a send of more than the transport
    buffers to a rank that receives nothing, both end within their timeout."""
    pgs = groups(2)
    start = time.monotonic()
    with pytest.raises(TransportTimeoutError, match="timed out"):
        PGTransport[Any](pgs[1], T10, "cpu").recv_checkpoint(0, "", 1, timedelta(seconds=0.5))
    assert time.monotonic() - start < 3
    pgs = groups(2)  # gloo closes a pair whose receive timed out
    big = {"w": torch.zeros(64 << 20, dtype=torch.uint8)}
    start = time.monotonic()
    sender = PGTransport[Any](pgs[0], T10, "cpu")
    sender.send_checkpoint([1], 1, big, timedelta(seconds=3))
    # Returned before its own timeout could end it: the send runs in a thread (a blocking
    # send to a rank that never receives would only end at the timeout).
    assert time.monotonic() - start < 3
    with pytest.raises(TransportTimeoutError, match="timed out"):
        sender.disallow_checkpoint()
    assert time.monotonic() - start < 10
    sender.disallow_checkpoint()  # reported once
    sender.shutdown()


def test_no_destinations_is_a_no_op(pair: list[Any]) -> None:
    send(PGTransport[Any](pair[0], T10), [], 1, _state())


def test_a_failed_save_reaches_the_receiver(pair: list[Any]) -> None:
    """The sender's save fails (a sparse tensor): it raises at disallow_checkpoint, and the
    receiver hears of it at once."""
    sender = PGTransport[Any](pair[0], T10, "cpu")
    receiver = PGTransport[Any](pair[1], T10, "cpu")
    bad = {"ok": torch.ones(3), "bad": torch.ones(2).to_sparse()}

    def recv() -> None:
        with pytest.raises(TransportError, match="failed while saving step 1"):
            receiver.recv_checkpoint(0, "", 1, T10)

    def send_bad() -> None:
        with pytest.raises(serializer.UnsupportedError):
            send(sender, [1], 1, bad)

    on_ranks([send_bad, recv])
    sd = _state()  # the pair still works
    _, got = on_ranks(
        [lambda: send(sender, [1], 2, sd), lambda: receiver.recv_checkpoint(0, "", 2, T10)]
    )
    assert_same(got, sd)


def _raw_send(pg: Any, dst: int, step: int, payload: bytes, protocol: int = PROTOCOL) -> None:
    """What a hostile rank can send: any header, any bytes."""
    header = torch.tensor([protocol, step, len(payload)], dtype=torch.int64)
    pg.send([header], dst, _TAG).wait()
    if payload:
        pg.send([torch.frombuffer(bytearray(payload), dtype=torch.uint8)], dst, _TAG).wait()
    pg.send([torch.tensor([protocol, step, 0], dtype=torch.int64)], dst, _TAG).wait()


def test_hostile_sender_never_runs_code(tmp_path: Any) -> None:
    pgs = groups(2)
    marker = tmp_path / "pwned"
    stream = forge.stream([], [], forge.skeleton({"x": forge.Call(os.system, f"touch {marker}")}))
    receiver = PGTransport[Any](pgs[1], T10, "cpu")

    def recv() -> None:
        with pytest.raises(serializer.UnsafeGlobalError):
            receiver.recv_checkpoint(0, "", 1, T10)

    on_ranks([lambda: _raw_send(pgs[0], 1, 1, stream), recv])
    assert not marker.exists()


@pytest.mark.parametrize(
    "protocol, size, error",
    [(12345, 10, "other than a checkpoint"), (PROTOCOL, 1 << 20, "more than this side's")],
)
def test_hostile_headers_are_refused(protocol: int, size: int, error: str) -> None:
    pgs = groups(2)
    receiver = PGTransport[Any](pgs[1], T10, "cpu", chunk_bytes=1 << 16)

    def send() -> None:
        header = torch.tensor([protocol, 1, size], dtype=torch.int64)
        pgs[0].send([header], 1, _TAG).wait()

    def recv() -> None:
        with pytest.raises(TransportError, match=error):
            receiver.recv_checkpoint(0, "", 1, timedelta(seconds=5))

    on_ranks([send, recv])


_SENDER = """
import sys, torch, torch.distributed as dist
from datetime import timedelta
from serializer.transports import PGTransport
store = dist.TCPStore("127.0.0.1", int(sys.argv[1]), is_master=False)
pg = dist.ProcessGroupGloo(dist.PrefixStore("dies", store), 1, 2, timedelta(seconds=30))
sd = {"w": torch.zeros(64 << 20, dtype=torch.uint8)}
t = PGTransport(pg, timedelta(seconds=60), chunk_bytes=1 << 16)
t.send_checkpoint([0], 1, sd, timedelta(seconds=60))
t.disallow_checkpoint()
"""


def test_sender_dies_mid_transfer() -> None:
    """The sending process is killed once the receiver has the index: a prompt error."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _SENDER, str(store.port)], env=env)
    try:
        pg = dist.ProcessGroupGloo(dist.PrefixStore("dies", store), 0, 2, timedelta(seconds=30))

        def kill() -> dict[str, Any]:
            proc.kill()
            proc.wait()
            return {}

        receiver = PGTransport[Any](pg, T10, "cpu", state_dict=kill, chunk_bytes=1 << 16)
        start = time.monotonic()
        with pytest.raises(TransportError):
            receiver.recv_checkpoint(1, "", 1, timedelta(seconds=60))
        assert time.monotonic() - start < 10
    finally:
        proc.kill()
        proc.wait()
