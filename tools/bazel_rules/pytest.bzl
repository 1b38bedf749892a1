"""Bazel test targets that run pytest (see pytest_runner.py).

    load("@serializer//tools/bazel_rules:pytest.bzl", "pytest_suite", "pytest_test")

`pytest_test` is a `py_test` that runs one or more test files under pytest, with pytest's
config (by default this repository's pyproject.toml, whose addopts load the plugins in
//testing), Bazel sharding, `--test_filter` (as `pytest -k`), JUnit XML and TEST_TMPDIR.
`pytest_suite` makes one such target per `*_test.py` file of a package.
"""

_RUNNER = Label("//tools/bazel_rules:pytest_runner.py")
_CONFIG = Label("//:pyproject.toml")
_CONFIG_DEPS = [Label("//testing:pytest_support")]

def pytest_test(name, srcs, deps = [], data = [], args = [], config = None, **kwargs):
    """A py_test running pytest on `srcs`.

    Args:
      name: the target's name.
      srcs: the test files.
      deps: what the tests import.
      data: files the tests read.
      args: more pytest arguments.
      config: a pytest config file (pyproject.toml, pytest.ini, ...). Default: this
        repository's pyproject.toml, with what its addopts load added to `deps`.
      **kwargs: passed to py_test (shard_count, tags, size, ...).
    """
    if config == None:
        config = _CONFIG
        deps = deps + _CONFIG_DEPS
    native.py_test(
        name = name,
        srcs = [_RUNNER] + srcs,
        main = _RUNNER,
        deps = deps,
        data = data + [config],
        args = ["$(rootpath %s)" % config] + ["$(rootpath %s)" % src for src in srcs] + args,
        legacy_create_init = False,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )

def pytest_suite(srcs = None, gpu_shard_count = 4, shard_counts = {}, **kwargs):
    """One pytest_test per test file, named after the file (foo_test.py -> :foo_test).

    Files named *_gpu_test.py need a CUDA device: they are tagged "gpu" (left out by
    `bazel test //...`, selected by `--config=gpu`) and sharded `gpu_shard_count` ways.

    Args:
      srcs: the test files; default: every *_test.py file of the package.
      gpu_shard_count: shard_count of GPU test targets.
      shard_counts: shard_count of other targets, by file name.
      **kwargs: passed to every pytest_test (deps, data, size, ...).
    """
    if srcs == None:
        srcs = native.glob(["*_test.py"], allow_empty = True)
    for src in srcs:
        tags = list(kwargs.get("tags", []))
        shard_count = shard_counts.get(src)
        if src.endswith("_gpu_test.py"):
            tags.append("gpu")
            shard_count = shard_count or gpu_shard_count
        pytest_test(
            name = src[:-len(".py")],
            srcs = [src],
            shard_count = shard_count,
            **dict(kwargs, tags = tags)
        )
