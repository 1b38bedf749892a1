"""The `progress=` hook of save, load and load_into: (bytes done, bytes of the stream)."""

from __future__ import annotations

import io
import socket
import threading

import torch

import serializer
from testing.cases import same_bits


def _state() -> dict[str, torch.Tensor]:
    return {f"w{i}": torch.randn(1 << 16) for i in range(24)} | {"small": torch.ones(3)}


def _check(calls: list[tuple[int, int]], nbytes: int) -> None:
    assert calls, "progress was never called"
    assert {total for _, total in calls} == {nbytes}, "one total, the stream's length"
    dones = [done for done, _ in calls]
    assert dones == sorted(dones), "bytes done never go back"
    assert dones[-1] == nbytes, "the last call says all of it"
    assert len(calls) >= 3, "reported as bytes move, not only at the end"


def test_save_and_load_report_progress_over_a_socket() -> None:
    state = _state()
    a, b = socket.socketpair()
    saved: list[tuple[int, int]] = []

    def send() -> None:
        with a:
            serializer.save(state, a, progress=lambda done, total: saved.append((done, total)))

    sender = threading.Thread(target=send)
    sender.start()
    loaded_calls: list[tuple[int, int]] = []
    with b:
        loaded = serializer.load(b, progress=lambda done, total: loaded_calls.append((done, total)))
    sender.join()
    buf = io.BytesIO()
    serializer.save(state, buf)
    _check(saved, len(buf.getvalue()))
    _check(loaded_calls, len(buf.getvalue()))
    assert all(same_bits(loaded[k], v) for k, v in state.items())


def test_load_into_reports_progress_also_over_records_it_seeks_past(tmp_path) -> None:
    state = _state()
    path = tmp_path / "s.srlz"
    serializer.save(state, path)
    dest = {"w3": torch.zeros(1 << 16)}
    calls: list[tuple[int, int]] = []
    serializer.load_into(dest, path, strict=False, progress=lambda d, t: calls.append((d, t)))
    _check(calls, path.stat().st_size)
    assert same_bits(dest["w3"], state["w3"])


def test_a_failing_progress_callback_stops_the_load() -> None:
    buf = io.BytesIO()
    serializer.save(_state(), buf)

    def cancel(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt  # what a user's Ctrl-C in a progress display raises

    try:
        serializer.load(io.BytesIO(buf.getvalue()), progress=cancel)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the callback's exception must stop the load")
