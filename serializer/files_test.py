"""Paths and URLs wherever a file object is taken (`_files`): local paths written atomically
and durably, fsspec URLs, and the errors of each."""

from __future__ import annotations

import io
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import serializer


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.arange(5), "s": torch.ones(())}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["str", "pathlib"])
def test_every_entry_point_takes_a_path(tmp_path: pathlib.Path, kind: str) -> None:
    """save raised "'str' object has no attribute 'write'" before."""
    path = tmp_path / "model.srlz"
    where = str(path) if kind == "str" else path
    state = _state()
    serializer.save(state, where)
    assert _same(serializer.load(where), state)
    assert serializer.read_index(where).keys() == ["w", "b", "s"]
    assert _same(serializer.load_keys(where, ["b"]), {"b": state["b"]})
    dest = {k: torch.zeros_like(v) for k, v in state.items()}
    serializer.load_into(dest, where)
    assert _same(dest, state)
    serializer.save(_state(1), where)  # replaces the file
    assert _same(serializer.load(where), _state(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.srlz"]  # no temporary left


def test_iter_load_reads_a_file_of_streams(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.srlz"
    with open(path, "wb") as f:
        for step in range(3):
            serializer.save({"step": step}, f)
    assert [obj["step"] for obj in serializer.iter_load(path)] == [0, 1, 2]


def test_a_failed_save_leaves_the_old_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.srlz"
    serializer.save(_state(), path)

    class Boom:
        def __reduce__(self) -> object:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        serializer.save({"a": torch.ones(3), "z": Boom()}, path)
    assert _same(serializer.load(path), _state())
    assert [p.name for p in tmp_path.iterdir()] == ["model.srlz"]


_KILLED_SAVER = textwrap.dedent(
    """
    import sys, torch, serializer
    state = {f"t{i}": torch.full((1 << 20,), float(i)) for i in range(64)}  # 256 MiB

    class Slow:  # a file object that lets the parent kill this process mid-stream
        def __init__(self, f): self.f = f; self.n = 0
        def write(self, data):
            self.n += 1
            if self.n == 20:
                print("writing", flush=True)
                sys.stdin.readline()  # the parent kills us here
            return self.f.write(data)
        def flush(self): self.f.flush()

    import serializer._files as files
    real = files._atomic_file
    def slow(path, sync):
        cm = real(path, sync)
        class Wrap:
            def __enter__(self): return Slow(cm.__enter__())
            def __exit__(self, *a): return cm.__exit__(*a)
        return Wrap()
    files._atomic_file = slow
    serializer.save(state, sys.argv[1])
    """
)


def test_a_killed_save_leaves_the_old_file(tmp_path: pathlib.Path) -> None:
    """A crash mid-save leaves the old file (and a temporary beside it), never half a file."""
    path = tmp_path / "model.srlz"
    serializer.save(_state(), path)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"
        temporaries = [p for p in tmp_path.iterdir() if p.name != "model.srlz"]
        assert len(temporaries) == 1 and temporaries[0].stat().st_size > 0
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
    assert _same(serializer.load(path), _state())


def test_a_new_file_gets_the_mode_open_would_give(tmp_path: pathlib.Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    path = tmp_path / "model.srlz"
    serializer.save(_state(), path, sync=False)
    assert path.stat().st_mode == plain.stat().st_mode


def test_a_missing_file_is_file_not_found_as_in_torch(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        serializer.load(tmp_path / "nope.srlz")
    with pytest.raises(FileNotFoundError):
        serializer.save(_state(), tmp_path / "no" / "dir.srlz")


def test_storage_options_apply_to_urls_only() -> None:
    with pytest.raises(TypeError, match="URLs only"):
        serializer.load(io.BytesIO(), storage_options={"anon": True})


def test_urls_go_through_fsspec() -> None:
    fsspec = pytest.importorskip("fsspec")
    url = f"memory://ckpt-{os.getpid()}/model.srlz"
    state = _state()
    serializer.save(state, url)
    assert _same(serializer.load(url), state)
    assert serializer.read_index(url).keys() == ["w", "b", "s"]
    fsspec.filesystem("memory").rm(url)
