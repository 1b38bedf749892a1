"""Process-group harnesses for tests, with real gloo groups (no mocks).

- `single_rank_group()`: a context manager that initializes a one-rank gloo group on a
  `dist.HashStore` in this process (rank 0, world 1), yields a CPU `DeviceMesh` of that rank,
  and destroys the group afterwards. The pytest plugin (`testing.pytest_plugin`) offers the
  same as the fixture `gloo_mesh`.
- `run_ranks(world_size, fn, *args, **kwargs)`: starts `world_size` CPU ranks as
  subprocesses, each with a gloo group over a TCP store on loopback, calls the importable
  function `fn(*args, **kwargs)` on every rank, and returns every rank's result in rank order.
  If any rank fails, raises `RankFailures` with every failing rank's traceback text (and the
  tail of its output); a rank that hangs is killed after `timeout`, the others a few seconds
  after the first failure.
- `restart_group()`: inside a rank started by `run_ranks`, destroys the default group and
  initializes a new one over the same store: what a fresh process would see, in one spawn.
- `destroy_group()`: `dist.destroy_process_group()` that sidesteps a deadlock of torch 2.4's
  gloo group destructor; the harnesses use it, and so should tests that make their own group.

Each spawned rank imports torch afresh (a few seconds): put several checks in one `fn`.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

__all__ = [
    "RankFailures",
    "destroy_group",
    "restart_group",
    "run_ranks",
    "single_rank_group",
]

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_gloo() -> Iterator[None]:
    """Make gloo use the loopback interface unless the caller chose one."""
    if sys.platform != "linux" or "GLOO_SOCKET_IFNAME" in os.environ:
        yield
        return
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    try:
        yield
    finally:
        os.environ.pop("GLOO_SOCKET_IFNAME", None)


_retired: list[Any] = []


def destroy_group() -> None:
    """`dist.destroy_process_group()`, but the destroyed groups' objects live on until the
    next call. torch 2.4's gloo group joins its worker threads in its destructor with the GIL
    held; a worker still freeing a finished collective's tensors needs the GIL: a deadlock
    when the last reference goes at once (seen about once in 40 teardowns)."""
    c10d = dist.distributed_c10d
    groups = list(getattr(getattr(c10d, "_world", None), "pg_map", None) or ())
    if dist.is_initialized():
        groups.append(c10d._get_default_group())
    dist.destroy_process_group()
    _retired[:] = groups  # the groups retired last time (idle by now) are freed here


@contextlib.contextmanager
def single_rank_group(mesh_dim_names: tuple[str, ...] | None = None) -> Iterator[Any]:
    """A one-rank gloo group (rank 0 of 1) for the block; yields a CPU DeviceMesh of it."""
    if dist.is_initialized():
        raise RuntimeError("a default process group is already initialized in this process")
    from torch.distributed.device_mesh import init_device_mesh

    with _loopback_gloo():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=mesh_dim_names)
    finally:
        destroy_group()


class RankFailures(AssertionError):
    """One or more ranks of `run_ranks` failed; `failures` maps rank to its report."""

    def __init__(self, world_size: int, failures: dict[int, str]) -> None:
        self.failures = failures
        parts = [f"{len(failures)} of {world_size} ranks failed"]
        for rank in sorted(failures):
            parts.append(f"---- rank {rank} ----\n{failures[rank].rstrip()}")
        super().__init__("\n".join(parts))


def _qualified(fn: Callable[..., Any] | str) -> tuple[str, str]:
    if isinstance(fn, str):
        module, _, name = fn.partition(":")
        if not module or not name:
            raise ValueError(f"expected 'module:function', got {fn!r}")
        return module, name
    module, name = fn.__module__, fn.__qualname__
    if module == "__main__" or "<locals>" in name or "<lambda>" in name:
        raise ValueError(f"{fn!r} is not importable by name; define it at module level")
    return module, name


def _resolve(module: str, name: str) -> Callable[..., Any]:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _tail(path: str, limit: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return ("..." if size > limit else "") + text


def run_ranks(
    world_size: int,
    fn: Callable[..., Any] | str,
    *args: Any,
    timeout: float = 120.0,
    grace: float = 10.0,
    backend: str = "gloo",
    **kwargs: Any,
) -> list[Any]:
    """Run `fn(*args, **kwargs)` on `world_size` ranks (subprocesses) with an initialized
    default group; return each rank's result, in rank order.

    `fn` is a module-level function (or ``"module:function"``); arguments and results are
    pickled. Every rank gets ``OMP_NUM_THREADS=1`` and the parent's ``sys.path``. Raises
    `RankFailures` naming every rank that raised, died or hung: after the first failure the
    others get `grace` seconds to finish, and everything is killed after `timeout`.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    module, name = _qualified(fn)
    workdir = tempfile.mkdtemp(prefix="serializer-ranks-")
    store = dist.TCPStore(
        LOOPBACK,
        0,
        world_size=None,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout),
        wait_for_workers=False,
    )
    job = {
        "fn": (module, name),
        "args": args,
        "kwargs": kwargs,
        "world_size": world_size,
        "port": store.port,
        "backend": backend,
        "timeout": timeout,
    }
    with open(os.path.join(workdir, "job.pkl"), "wb") as f:
        pickle.dump(job, f)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    code = (
        "import sys; from testing.distributed import _rank_main; "
        "sys.exit(_rank_main(sys.argv[1:]))"
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs = [os.path.join(workdir, f"rank{r}.log") for r in range(world_size)]
    try:
        for rank in range(world_size):
            with open(logs[rank], "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", code, workdir, str(rank)],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        killed = _wait(procs, workdir, timeout, grace)
        return _collect(procs, workdir, logs, killed, world_size)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        del store
        shutil.rmtree(workdir, ignore_errors=True)


def _result(workdir: str, rank: int) -> tuple[str, Any] | None:
    path = os.path.join(workdir, f"rank{rank}.result")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        result: tuple[str, Any] = pickle.load(f)  # written by our own child process
    return result


def _wait(
    procs: list[subprocess.Popen[bytes]], workdir: str, timeout: float, grace: float
) -> dict[int, str]:
    """Wait for every rank; kill the stragglers. Returns why each killed rank was killed."""
    start = time.monotonic()
    deadline = start + timeout
    first_failure: int | None = None
    while True:
        running = [r for r, p in enumerate(procs) if p.poll() is None]
        if not running:
            return {}
        if first_failure is None:
            for rank, proc in enumerate(procs):
                result = _result(workdir, rank) if proc.poll() is None else None
                failed = proc.poll() not in (None, 0) or (result is not None and result[0] != "ok")
                if failed:
                    first_failure = rank
                    deadline = min(deadline, time.monotonic() + grace)
                    break
        now = time.monotonic()
        if now >= deadline:
            why = (
                f"killed: still running {grace:.0f} s after rank {first_failure} failed"
                if first_failure is not None and deadline - start < timeout
                else f"killed: still running after the timeout of {timeout:.0f} s"
            )
            killed = {}
            for rank in running:
                procs[rank].kill()
                procs[rank].wait()
                killed[rank] = why
            return killed
        time.sleep(0.05)


def _collect(
    procs: list[subprocess.Popen[bytes]],
    workdir: str,
    logs: list[str],
    killed: dict[int, str],
    world_size: int,
) -> list[Any]:
    results: list[Any] = []
    failures: dict[int, str] = {}
    for rank, proc in enumerate(procs):
        result = _result(workdir, rank)
        if result is not None and result[0] == "ok":  # (if killed: in the final barrier)
            results.append(result[1])
            continue
        if result is not None:
            report = result[1]
        elif rank in killed:
            report = killed[rank]
        else:
            report = f"exited with code {proc.returncode} before reporting a result"
        output = _tail(logs[rank]).strip()
        if output:
            report += f"\n-- output of rank {rank} --\n{output}"
        failures[rank] = report
    if failures:
        raise RankFailures(world_size, failures)
    return results


# ---------------------------------------------------------------------------- in a rank

_rank_store: Any = None
_rank_job: dict[str, Any] = {}
_restarts = 0


def _init_group(store: Any) -> None:
    dist.init_process_group(
        _rank_job["backend"],
        store=store,
        rank=_rank_job["rank"],
        world_size=_rank_job["world_size"],
        timeout=datetime.timedelta(seconds=_rank_job["timeout"]),
    )


def restart_group() -> None:
    """In a rank of `run_ranks`: destroy the default group and make a new one (every rank
    must call this, like any collective)."""
    global _restarts
    if _rank_store is None:
        raise RuntimeError("restart_group() works only in a rank started by run_ranks")
    destroy_group()
    _restarts += 1
    _init_group(dist.PrefixStore(f"restart{_restarts}/", _rank_store))


def _write_result(workdir: str, rank: int, result: tuple[str, Any]) -> None:
    path = os.path.join(workdir, f"rank{rank}.result")
    try:
        data = pickle.dumps(result)
    except Exception:
        why = f"the result of rank {rank} cannot be pickled:\n{traceback.format_exc()}"
        data = pickle.dumps(("error", why))
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def _rank_main(argv: list[str]) -> int:
    """The main of a rank process started by `run_ranks`."""
    global _rank_store
    workdir, rank = argv[0], int(argv[1])
    with open(os.path.join(workdir, "job.pkl"), "rb") as f:
        job = pickle.load(f)  # written by our parent
    _rank_job.update(job, rank=rank)
    try:
        _rank_store = dist.TCPStore(
            LOOPBACK,
            job["port"],
            world_size=None,
            is_master=False,
            timeout=datetime.timedelta(seconds=job["timeout"]),
        )
        _init_group(dist.PrefixStore("run_ranks/", _rank_store))
        fn = _resolve(*job["fn"])
        value = fn(*job["args"], **job["kwargs"])
    except BaseException:
        _write_result(workdir, rank, ("error", traceback.format_exc()))
        _exit(1)
    _write_result(workdir, rank, ("ok", value))
    with contextlib.suppress(Exception):
        dist.barrier()  # no rank leaves while a peer may still talk to it
    _exit(0)
    return 0  # not reached


def _exit(code: int) -> None:
    """Leave without running the groups' destructors (see `destroy_group`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

