"""`HTTPTransport` on real HTTP servers on 127.0.0.1: torchft's own cases
(checkpoint_server_test: unchunked and chunked round trips, a zero timeout, a step mismatch;
the locking test, through behaviour rather than private fields), several receivers at once,
in-place receives, the token, cut-off and shut-down servers, every catalog case bit for bit,
hostile and dying peers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch

import serializer
from serializer.transports import (
    HTTPTransport,
    StepMismatchError,
    TransportError,
    TransportTimeoutError,
)
from testing import forge
from testing.cases import Case, assert_same

T10 = timedelta(seconds=10)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def server() -> Iterator[HTTPTransport[Any]]:
    transport: HTTPTransport[Any] = HTTPTransport(T10, num_chunks=3)
    yield transport
    transport.shutdown()


def _expected() -> dict[str, Any]:
    return {"state": "dict", "tensor": torch.rand(5, 2), "cuda": torch.rand(2, 3)}


@pytest.mark.parametrize("num_chunks", [0, 3])
def test_checkpoint_server(num_chunks: int) -> None:
    """torchft's test_checkpoint_server: round trip, a zero timeout, a step mismatch."""
    expected = _expected()
    server: HTTPTransport[Any] = HTTPTransport(T10, num_chunks=num_chunks)
    try:
        server.send_checkpoint(dst_ranks=[], step=1234, state_dict=expected, timeout=T10)
        metadata = server.metadata()
        out = server.recv_checkpoint(src_rank=0, metadata=metadata, step=1234, timeout=T10)
        assert_same(out, expected)

        with pytest.raises(TransportTimeoutError, match="timed out"):
            server.recv_checkpoint(0, metadata, 1234, timedelta(seconds=0.0))

        server.send_checkpoint(dst_ranks=[], step=2345, state_dict=expected, timeout=T10)
        with pytest.raises(StepMismatchError, match="serving step 2345, not step 1234"):
            server.recv_checkpoint(0, metadata, 1234, T10)
    finally:
        server.shutdown()


def test_locking(server: HTTPTransport[Any]) -> None:
    """torchft's test_checkpoint_server_locking, by behaviour: nothing is served before the
    first send_checkpoint or after disallow_checkpoint (requests wait, then time out);
    allowing twice and disallowing twice are fine."""
    sd = {"w": torch.arange(4.0)}
    md = server.metadata()
    with pytest.raises(TransportTimeoutError, match="timed out"):
        server.recv_checkpoint(0, md, 1, timedelta(seconds=0.3))
    server.send_checkpoint([], 1, sd, T10)
    server.send_checkpoint([], 2, sd, T10)
    assert_same(server.recv_checkpoint(0, md, 2, T10), sd)
    server.disallow_checkpoint()
    server.disallow_checkpoint()
    with pytest.raises(TransportTimeoutError, match="timed out"):
        server.recv_checkpoint(0, md, 2, timedelta(seconds=0.3))


def test_waits_for_a_later_step(server: HTTPTransport[Any]) -> None:
    """A receiver that asks for a step before the sender serves it gets it once served."""
    sd = {"w": torch.arange(6.0)}
    server.send_checkpoint([], 1, sd, T10)
    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(server.recv_checkpoint, 0, server.metadata(), 2, T10)
        time.sleep(0.3)
        assert not got.done()
        server.send_checkpoint([], 2, sd, T10)
        assert_same(got.result(timeout=10), sd)


def test_several_receivers_at_once(server: HTTPTransport[Any]) -> None:
    sd = {f"layer{i}": torch.randn(64, 64) for i in range(10)}
    sd["meta"] = {"step": 3, "names": ["a", "b"]}
    server.send_checkpoint([1, 2, 3], 3, sd, T10)
    receivers = [HTTPTransport[Any](T10) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            got = list(
                pool.map(lambda r: r.recv_checkpoint(0, server.metadata(), 3, T10), receivers)
            )
    finally:
        for r in receivers:
            r.shutdown()
    for g in got:
        assert_same(g, sd)


def test_in_place(server: HTTPTransport[Any]) -> None:
    sd = {"a": torch.randn(100, 10), "b": {"c": torch.arange(7), "n": 5}, "d": torch.ones(3)}
    dest = {"a": torch.zeros(100, 10), "b": {"c": torch.zeros(7, dtype=torch.int64), "n": 0}}
    pointers = [dest["a"].data_ptr(), dest["b"]["c"].data_ptr()]
    receiver: HTTPTransport[Any] = HTTPTransport(T10, state_dict=lambda: dest)
    try:
        server.send_checkpoint([1], 4, sd, T10)
        got = receiver.recv_checkpoint(0, server.metadata(), 4, T10)
    finally:
        receiver.shutdown()
    assert_same(got, sd)  # "d" has no destination: its part loads fresh, where it is alone
    assert got["a"] is dest["a"] and got["b"]["c"] is dest["b"]["c"]
    assert [dest["a"].data_ptr(), dest["b"]["c"].data_ptr()] == pointers
    assert torch.equal(dest["a"], sd["a"]) and got["b"]["n"] == 5


def test_in_place_shape_mismatch_is_an_error(server: HTTPTransport[Any]) -> None:
    server.send_checkpoint([1], 1, {"a": torch.randn(4)}, T10)
    receiver: HTTPTransport[Any] = HTTPTransport(T10, state_dict=lambda: {"a": torch.zeros(5)})
    try:
        with pytest.raises(serializer.MismatchError):
            receiver.recv_checkpoint(0, server.metadata(), 1, T10)
    finally:
        receiver.shutdown()


def test_token_and_address(server: HTTPTransport[Any]) -> None:
    url = urlsplit(server.metadata())
    assert url.hostname == "127.0.0.1"
    server.send_checkpoint([1], 1, {"a": torch.ones(2)}, T10)
    forged = f"http://127.0.0.1:{url.port}/{'0' * 32}/"
    with pytest.raises(TransportError, match="403"):
        server.recv_checkpoint(0, forged, 1, T10)
    with pytest.raises(TransportError, match="403"):
        server.recv_checkpoint(0, f"http://127.0.0.1:{url.port}/%C3%A9t%C3%A9/", 1, T10)
    with pytest.raises(TransportError, match="not an HTTPTransport address"):
        server.recv_checkpoint(0, "<n/a>", 1, T10)


def test_disallow_waits_for_requests_in_flight_then_cuts_them_off() -> None:
    """A receiver that stops reading holds a request in flight: disallow_checkpoint waits
    for it up to the timeout, then cuts it off, and serves nothing more."""
    server: HTTPTransport[Any] = HTTPTransport(timedelta(seconds=1))
    try:
        server.send_checkpoint([1], 1, {"big": torch.zeros(64 << 20, dtype=torch.uint8)}, T10)
        url = urlsplit(server.metadata())
        stalled = socket.create_connection((url.hostname, url.port))
        stalled.sendall(f"GET {url.path}1/0 HTTP/1.0\r\n\r\n".encode())
        assert stalled.recv(12).startswith(b"HTTP/1.0 200")
        start = time.monotonic()
        server.disallow_checkpoint()  # returns only once the request is no longer served
        took = time.monotonic() - start
        assert 0.9 < took < 5, took
        with pytest.raises(TransportTimeoutError, match="timed out"):
            server.recv_checkpoint(0, server.metadata(), 1, timedelta(seconds=0.3))
        stalled.close()
    finally:
        server.shutdown()


def test_shutdown_never_hangs() -> None:
    server: HTTPTransport[Any] = HTTPTransport(T10)
    md = server.metadata()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(server.recv_checkpoint, 0, md, 1, T10)  # waits: nothing served
        time.sleep(0.2)
        start = time.monotonic()
        server.shutdown()
        server.shutdown()  # twice is fine
        with pytest.raises(TransportError):
            waiting.result(timeout=5)
        assert time.monotonic() - start < 3
    other: HTTPTransport[Any] = HTTPTransport(T10)
    start = time.monotonic()
    other.shutdown(wait=False)
    assert time.monotonic() - start < 0.5


def test_catalog_bit_exact(case: Case, server: HTTPTransport[Any]) -> None:
    """Every dtype and layout of the shared catalog (the `case` fixture), in 3 parts."""
    if not case.weights_only:
        pytest.skip("loads only with weights_only=False")
    obj = case.build("cpu")
    server.send_checkpoint([1], 5, obj, T10)
    assert_same(server.recv_checkpoint(0, server.metadata(), 5, T10), obj)


# -- hostile and dying peers --------------------------------------------------------------


class _Hostile(ThreadingHTTPServer):
    """A peer that answers every request with the bytes `body`, then closes."""

    daemon_threads = True

    def __init__(self, body: bytes) -> None:
        body_ = body

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body_)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def metadata(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{'a' * 32}/"


def _index(step: int, parts: int = 1) -> bytes:
    import io

    buf = io.BytesIO()
    serializer.save({"version": 1, "step": step, "tree": None, "parts": [[()]] * parts}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["serializer", "torch-pickle"])
def test_hostile_peer_never_runs_code(tmp_path: Any, fmt: str) -> None:
    marker = tmp_path / "pwned"
    call = forge.Call(os.system, f"touch {marker}")
    if fmt == "serializer":
        body = forge.stream([], [], forge.skeleton({"x": call}))
    else:  # what torchft's transports send: a plain pickle, as torch's streams begin
        import pickle

        body = pickle.dumps(call, protocol=2)
    peer = _Hostile(body)
    receiver: HTTPTransport[Any] = HTTPTransport(T10)
    try:
        with pytest.raises(serializer.SerializerError):
            receiver.recv_checkpoint(0, peer.metadata(), 1, T10)
    finally:
        receiver.shutdown()
        peer.shutdown()
    assert not marker.exists()


def test_hostile_index_is_refused() -> None:
    import io

    buf = io.BytesIO()
    serializer.save({"version": 1, "step": 1, "tree": None, "parts": "no"}, buf)
    peer = _Hostile(buf.getvalue())
    receiver: HTTPTransport[Any] = HTTPTransport(T10)
    try:
        with pytest.raises(TransportError, match="other than a checkpoint index"):
            receiver.recv_checkpoint(0, peer.metadata(), 1, T10)
    finally:
        receiver.shutdown()
        peer.shutdown()


def test_truncated_stream_is_a_prompt_error() -> None:
    body = _index(1)
    peer = _Hostile(body[: len(body) // 2])
    receiver: HTTPTransport[Any] = HTTPTransport(T10)
    start = time.monotonic()
    try:
        with pytest.raises(serializer.TruncatedError):
            receiver.recv_checkpoint(0, peer.metadata(), 1, T10)
    finally:
        receiver.shutdown()
        peer.shutdown()
    assert time.monotonic() - start < 3


_SENDER = """
import sys, torch, serializer.transports as st
from datetime import timedelta
t = st.HTTPTransport(timedelta(seconds=30), num_chunks=2)
t.send_checkpoint([1], 1, {"a": torch.zeros(32 << 20, dtype=torch.uint8),
                          "b": torch.ones(32 << 20, dtype=torch.uint8)}, timedelta(seconds=30))
print(t.metadata(), flush=True)
sys.stdin.read()
"""


def test_sender_dies_mid_transfer() -> None:
    """The sender process is killed after the receiver has the index: a prompt error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SENDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        metadata = proc.stdout.readline().strip()

        def kill() -> dict[str, Any]:
            proc.kill()
            proc.wait()
            return {}

        receiver: HTTPTransport[Any] = HTTPTransport(T10, state_dict=kill)
        start = time.monotonic()
        try:
            with pytest.raises(TransportError, match="failed"):
                receiver.recv_checkpoint(0, metadata, 1, timedelta(seconds=60))
        finally:
            receiver.shutdown()
        assert time.monotonic() - start < 5
    finally:
        proc.kill()
        proc.wait()


def test_module_state_dict_keeps_its_metadata(server: HTTPTransport[Any]) -> None:
    """A module's state dict (an OrderedDict with `_metadata`) arrives as one, and loads."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = model.state_dict()
    server.send_checkpoint([1], 1, {"model": sd, "step": 1}, T10)
    got = server.recv_checkpoint(0, server.metadata(), 1, T10)
    assert type(got["model"]) is type(sd) and got["model"]._metadata == sd._metadata
    assert_same(got["model"], sd)
    torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).load_state_dict(
        got["model"]
    )


def test_parts_keep_shared_storages_together(server: HTTPTransport[Any]) -> None:
    """num_chunks=3 over views of one storage and separate tensors: views stay views."""
    base = torch.arange(1000.0)
    sd = {
        "base": base,
        "head": base[:10],
        "tail": base[-10:],
        "x": torch.ones(500),
        "y": torch.zeros(300),
    }
    server.send_checkpoint([1], 1, sd, T10)
    got = server.recv_checkpoint(0, server.metadata(), 1, T10)
    assert_same(got, sd)
    assert got["head"].untyped_storage().data_ptr() == got["base"].untyped_storage().data_ptr()


_WITHOUT_TORCHFT = """
import sys
from datetime import timedelta
sys.modules["torchft"] = None  # as if not installed: importing it raises ImportError
import torch
import serializer.transports as st
assert st.CheckpointTransport.__module__ == "serializer.transports._common"
t = st.HTTPTransport(timedelta(seconds=10), num_chunks=2)
t.send_checkpoint([1], 1, {"w": torch.arange(5)}, timedelta(seconds=10))
got = t.recv_checkpoint(0, t.metadata(), 1, timedelta(seconds=10))
assert torch.equal(got["w"], torch.arange(5))
t.shutdown()
print("ok without torchft")
"""


def test_works_without_torchft() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCHFT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "ok without torchft" in run.stdout, run.stderr[-3000:]
