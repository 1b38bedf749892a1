"""The CPU count for helper threads: affinity, capped by a cgroup v1 or v2 CPU quota, read
from fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

from serializer import _cpus

AFFINITY = len(os.sched_getaffinity(0))


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _self(tmp_path: Path, text: str) -> str:
    path = tmp_path / "self_cgroup"
    path.write_text(text)
    return str(path)


def test_v2_quota_of_own_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _files(
        root,
        {
            "cgroup.controllers": "cpu memory",
            "cpu.max": "max 100000",
            "pod/cgroup.controllers": "cpu",
            "pod/cpu.max": "150000 100000",
            "pod/job/cpu.max": "max 100000",
        },
    )
    me = _self(tmp_path, "0::/pod/job\n")
    assert _cpus.cgroup_cpu_limit(str(root), me) == 1.5
    assert _cpus.usable_cpus(str(root), me) == 1  # rounded down, never above affinity


def test_v2_tightest_ancestor_and_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _files(
        root,
        {
            "cgroup.controllers": "cpu",
            "a/cpu.max": "800000 100000",
            "a/b/cpu.max": "1600000 100000",
        },
    )
    assert _cpus.cgroup_cpu_limit(str(root), _self(tmp_path, "0::/a/b\n")) == 8.0
    assert _cpus.usable_cpus(str(root), _self(tmp_path, "0::/a/b\n")) == min(AFFINITY, 8)
    assert _cpus.cgroup_cpu_limit(str(root), _self(tmp_path, "0::/\n")) is None
    assert _cpus.usable_cpus(str(root), _self(tmp_path, "0::/\n")) == AFFINITY


def test_v1_quota(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _files(
        root,
        {
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
        },
    )
    me = _self(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert _cpus.cgroup_cpu_limit(str(root), me) == 0.5
    assert _cpus.usable_cpus(str(root), me) == 1  # at least one


def test_v1_unlimited_and_hybrid_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _files(
        root,
        {
            "cpu/cpu.cfs_period_us": "100000",
            "cpu/cpu.cfs_quota_us": "-1",
            "unified/cgroup.controllers": "",
            "unified/x/cpu.max": "300000 100000",
        },
    )
    me = _self(tmp_path, "1:cpu:/\n0::/x\n")
    assert _cpus.cgroup_cpu_limit(str(root), me) == 3.0


def test_missing_or_garbled_files(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _files(root, {"cgroup.controllers": "cpu", "cpu.max": "garbage", "a/cpu.max": "0 0"})
    assert _cpus.cgroup_cpu_limit(str(root), _self(tmp_path, "0::/a\nnonsense\n")) is None
    assert _cpus.cgroup_cpu_limit(str(tmp_path / "absent"), str(tmp_path / "absent")) is None
    assert _cpus.usable_cpus(str(tmp_path / "absent"), str(tmp_path / "absent")) == AFFINITY


def test_this_machine() -> None:
    assert 1 <= _cpus.usable_cpus() <= AFFINITY
