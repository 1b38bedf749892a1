"""testing/sharding.py, through real pytest runs of a generated test file."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).absolute().parents[1]  # not resolved: under Bazel, the runfiles tree
_BAZEL_VARS = (
    "TEST_TOTAL_SHARDS",
    "TEST_SHARD_INDEX",
    "TEST_SHARD_STATUS_FILE",
    "TESTBRIDGE_TEST_ONLY",
    "XML_OUTPUT_FILE",
    "PYTEST_ADDOPTS",
)

SEVEN_TESTS = """
import pytest

def test_a(): pass
def test_b(): pass

@pytest.mark.parametrize("n", range(3))
def test_p(n): pass

class TestC:
    def test_x(self): pass
    def test_y(self): pass
"""

TWO_TESTS = "def test_a(): pass\ndef test_b(): pass\n"


def run(tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None):
    """Runs pytest with the plugin on `source`: (exit code, ids of the tests run, output)."""
    (tmp_path / "gen_test.py").write_text(source)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    xml = tmp_path / "junit.xml"
    xml.unlink(missing_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k not in _BAZEL_VARS}
    path = [str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    full_env.update(PYTHONPATH=os.pathsep.join(path), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    full_env.update(env or {})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "testing.sharding",
            "-p",
            "no:cacheprovider",
            "--junitxml",
            str(xml),
            "-q",
            "gen_test.py",
            *args,
        ],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ran = set()
    if xml.exists():
        for case in ET.parse(xml).iter("testcase"):
            ran.add(f"{case.get('classname')}::{case.get('name')}")
    return proc.returncode, ran, proc.stdout + proc.stderr


@pytest.mark.parametrize("count", [2, 3])
def test_shards_partition_the_tests(tmp_path: Path, count: int) -> None:
    code, everything, out = run(tmp_path, SEVEN_TESTS)
    assert code == 0 and len(everything) == 7, out
    shards = []
    for index in range(count):
        code, ran, out = run(
            tmp_path, SEVEN_TESTS, f"--shard-count={count}", f"--shard-index={index}"
        )
        assert code == 0, out
        shards.append(ran)
    assert set().union(*shards) == everything  # none lost, none invented
    assert sum(len(s) for s in shards) == len(everything)  # disjoint
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


def test_more_shards_than_tests_leaves_an_empty_shard(tmp_path: Path) -> None:
    results = [run(tmp_path, TWO_TESTS, "--shard-count=3", f"--shard-index={i}") for i in range(3)]
    assert [code for code, _, _ in results] == [0, 0, 5]  # 5: pytest's "no tests ran"
    assert [len(ran) for _, ran, _ in results] == [1, 1, 0]
    assert results[0][1] | results[1][1] == {"gen_test::test_a", "gen_test::test_b"}


def test_environment_as_set_by_bazel(tmp_path: Path) -> None:
    status = tmp_path / "status"
    env = {"TEST_TOTAL_SHARDS": "3", "TEST_SHARD_INDEX": "1", "TEST_SHARD_STATUS_FILE": str(status)}
    code, from_env, out = run(tmp_path, SEVEN_TESTS, env=env)
    assert code == 0 and status.exists(), out
    assert from_env == run(tmp_path, SEVEN_TESTS, "--shard-count=3", "--shard-index=1")[1]
    # The options win over the environment.
    code, from_options, out = run(tmp_path, SEVEN_TESTS, "--shard-count=1", env=env)
    assert code == 0 and len(from_options) == 7, out


def test_shard_index_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    code, ran, out = run(tmp_path, TWO_TESTS, "--shard-count=2", "--shard-index=2")
    assert code == pytest.ExitCode.USAGE_ERROR and not ran, out
    assert "shard index 2 is not in [0, 2)" in out


def _collected(args: list[str]) -> list[str]:
    """Node ids pytest selects with `args` (collection only), in the repo's own config."""
    root = Path(__file__).resolve().parent.parent
    # Under Bazel this test is itself sharded: the inner runs must not inherit that.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_SHARD", "TEST_TOTAL"))}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode in (0, 5), out.stdout + out.stderr
    return [line for line in out.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize("count", [2, 4])
def test_gpu_suite_shards_run_every_test_exactly_once(count: int) -> None:
    """The real GPU suite (collected on any machine) splits with none lost or doubled."""
    suite = "serializer/backends/cuda_gpu_test.py"
    whole = _collected([suite])
    assert len(whole) > 100
    shards = [
        _collected([suite, "--shard-count", str(count), "--shard-index", str(i)])
        for i in range(count)
    ]
    union = [node for shard in shards for node in shard]
    assert sorted(union) == sorted(whole)
    assert len(set(union)) == len(union)
