"""The fuzz harness in CI (docs/SECURITY.md#fuzzing): every reproducer of a past finding and
every seed replayed through every target, each in a child process under time and memory
limits, asserting only library errors; the committed corpus checked; and a brief fuzzing run.

A finding whose manifest entry is "open" (not fixed yet) is an expected failure, strictly:
once the library handles its reproducer, the test fails until the entry says "fixed".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The harness, its seeds and findings cover torch's streaming format too, which torch < 2.7
# lacks: on those versions (the CI sweep's oldest) there is nothing to replay them against.
pytest.importorskip("torch.distributed._serialization")

from tools import fuzz  # noqa: E402

SEED_FILES = fuzz.seed_files()
FINDING_FILES = fuzz.finding_files()
MAX_SEEDS = 50
MAX_SEED_BYTES = 8 << 10
SMOKE_SECONDS = 8


@pytest.fixture(scope="module")
def replayed() -> dict[tuple[str, str], dict[str, Any]]:
    """(file name, target) -> what a fresh child made of it, for seeds and findings."""
    cases = [(str(p), t) for p in [*SEED_FILES, *FINDING_FILES] for t in fuzz.TARGETS]
    results = fuzz.replay(cases, timeout=30)
    return {(Path(p).name, t): r for (p, t), r in zip(cases, results, strict=True)}


def _bad(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        target: str(r.get("message") or r.get("stderr") or r)[:500]
        for target, r in results.items()
        if r["result"] != "ok"
    }


def test_seed_corpus_is_small() -> None:
    assert SEED_FILES, "no seeds: python -m tools.fuzz --make-seeds"
    assert len(SEED_FILES) <= MAX_SEEDS
    for path in SEED_FILES:
        assert 0 < path.stat().st_size <= MAX_SEED_BYTES, path


def test_seeds_are_streams_of_both_formats() -> None:
    ours = [p for p in SEED_FILES if fuzz.split(p.read_bytes()) is not None]
    theirs = [p for p in SEED_FILES if fuzz.torch_split(p.read_bytes()) is not None]
    assert len(ours) + len(theirs) == len(SEED_FILES)
    assert ours and theirs


def test_every_finding_is_in_the_manifest() -> None:
    entries = fuzz.manifest()
    assert sorted(entries) == sorted(p.name for p in FINDING_FILES)
    for name, entry in entries.items():
        assert entry["status"] in ("open", "fixed"), name
        assert entry["signatures"] and entry["targets"] and entry["summary"], name
        assert set(entry["targets"]) <= set(fuzz.TARGETS), name


@pytest.mark.parametrize("path", SEED_FILES, ids=[f"{p.parent.name}/{p.name}" for p in SEED_FILES])
def test_seed_replays_cleanly(path: Path, replayed: dict[tuple[str, str], Any]) -> None:
    results = {t: replayed[(path.name, t)] for t in fuzz.TARGETS}
    assert not _bad(results)
    if path.parent == fuzz.OUR_SEEDS and "cuda" not in path.name and "dtensor" not in path.name:
        assert results["load"]["outcome"] == "loaded"


@pytest.mark.parametrize("path", FINDING_FILES, ids=[p.name for p in FINDING_FILES])
def test_finding_replays(path: Path, replayed: dict[tuple[str, str], Any]) -> None:
    entry = fuzz.manifest()[path.name]
    bad = _bad({t: replayed[(path.name, t)] for t in fuzz.TARGETS})
    if entry["status"] == "fixed":
        assert not bad, f"{path.name} (fixed) misbehaves again"
        return
    assert set(bad) <= set(entry["targets"]), f"{path.name}: other targets misbehave too: {bad}"
    if not bad:
        pytest.fail(f"{path.name} no longer reproduces: set its status to fixed in the manifest")
    pytest.xfail(f"open finding: {entry['summary'][:200]}")


def test_fuzzing_runs_briefly(tmp_path: Path) -> None:
    """A few seconds of fuzzing (atheris where installed, else the random mutator) finds
    nothing that is not a known, open finding."""
    proc = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", "--seconds", str(SMOKE_SECONDS), "--target",
         "load", "--workdir", str(tmp_path), "--seed", "1"],
        cwd=fuzz.ROOT, env=fuzz._child_env(), capture_output=True, text=True, timeout=55,
    )  # fmt: skip
    summary_path = tmp_path / "summary.json"
    assert summary_path.exists(), proc.stdout + proc.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["executions"] > 0, proc.stdout
    found = [(f["signature"], f["file"], f["replay"]) for f in summary["findings"]]
    assert not found, f"new findings: {found}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
