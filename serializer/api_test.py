"""End to end through the public surface: the whole catalog over every transport and from
another process, streams back to back, non-blocking sockets."""

from __future__ import annotations

import io
import os

import torch

import serializer
from testing.cases import Case, assert_same, make_tensor
from testing.transports import save_in_subprocess


def _load(weights_only: bool):
    return lambda f: serializer.load(f, weights_only=weights_only)


def test_catalog_round_trip(case: Case, transport) -> None:
    obj = case.build("cpu")
    assert_same(transport(obj, _load(case.weights_only)), obj)


def test_catalog_round_trip_from_another_process(case: Case) -> None:
    r, w = os.pipe()
    proc = save_in_subprocess(case.name, w)
    os.close(w)
    with open(r, "rb", buffering=0) as f:
        loaded = serializer.load(f, weights_only=case.weights_only)
        assert f.read() == b"", "load left bytes of its stream unread"
    assert proc.wait(60) == 0
    assert_same(loaded, case.build("cpu"))


def test_streams_back_to_back_on_one_pipe() -> None:
    objs = [{"a": make_tensor((100,), torch.float32, seed=i), "i": i} for i in range(3)]
    buf = io.BytesIO()
    for obj in objs:
        serializer.save(obj, buf)
    buf.seek(0)
    for obj in objs:
        assert_same(serializer.load(buf), obj)
    assert buf.read() == b""


def test_non_blocking_sockets() -> None:
    import socket
    import threading

    obj = {"t": make_tensor((1 << 20,), torch.float32), "s": "x"}
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        errors = []

        def send() -> None:
            try:
                serializer.save(obj, a)
            except BaseException as e:
                errors.append(e)
            finally:
                a.shutdown(socket.SHUT_WR)  # the reader sees the end instead of waiting

        thread = threading.Thread(target=send)
        thread.start()
        loaded = serializer.load(b)
        thread.join()
    assert not errors
    assert_same(loaded, obj)
