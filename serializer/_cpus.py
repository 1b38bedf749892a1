"""How many CPUs this process may really use: its affinity, less a cgroup CPU quota.

`os.cpu_count()` counts the machine; `os.sched_getaffinity` counts the CPUs the process may be
scheduled on, but not a container's CPU quota (cgroup v2 ``cpu.max``, cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), under which a process that sees 64 CPUs may
only get the time of 2. The library decides whether a helper thread pays with this count.
"""

from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"
SELF_CGROUP = "/proc/self/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _ancestors(directory: str, top: str) -> list[str]:
    """`directory` and each directory above it, up to and including `top`."""
    out = []
    top = os.path.normpath(top)
    d = os.path.normpath(directory)
    while True:
        out.append(d)
        if d == top or not d.startswith(top + os.sep):
            break
        d = os.path.dirname(d)
    return out


def _v2_quota(directory: str) -> float | None:
    text = _read(os.path.join(directory, "cpu.max"))  # "max 100000" or "200000 100000"
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(directory: str) -> float | None:
    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))  # -1: no limit
    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _cgroup_dirs(root: str, self_cgroup: str) -> list[tuple[str, bool]]:
    """(directory, is_v2) of every cgroup whose CPU quota applies to this process: its own
    cgroup and the ones above it, for each hierarchy that has the CPU controller; and the
    hierarchy's root (inside a container, often the container's own cgroup)."""
    dirs: list[tuple[str, bool]] = []
    text = _read(self_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: "0::/path" (hybrid systems mount it at unified/)
            mounts = [root, os.path.join(root, "unified")]
            marker = "cgroup.controllers"
            v2 = True
        elif "cpu" in controllers.split(","):  # cgroup v1: "4:cpu,cpuacct:/path"
            mounts = [os.path.join(root, controllers), os.path.join(root, "cpu")]
            marker = "cpu.cfs_period_us"
            v2 = False
        else:
            continue
        for mount in mounts:
            if os.path.exists(os.path.join(mount, marker)):
                dirs += [(d, v2) for d in _ancestors(os.path.join(mount, rel), mount)]
                break
    if not dirs:  # no /proc/self/cgroup: the roots as mounted
        dirs = [(root, True), (os.path.join(root, "cpu"), False)]
    return dirs


def cgroup_cpu_limit(root: str = CGROUP_ROOT, self_cgroup: str = SELF_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroups, in CPUs (1.5 = 150 ms of CPU time
    per 100 ms), or None where there is none (or no cgroup file system)."""
    limits = []
    for directory, v2 in _cgroup_dirs(root, self_cgroup):
        quota = _v2_quota(directory) if v2 else _v1_quota(directory)
        if quota is not None:
            limits.append(quota)
    return min(limits) if limits else None


def usable_cpus(root: str = CGROUP_ROOT, self_cgroup: str = SELF_CGROUP) -> int:
    """CPUs the process may use at once: its affinity set, capped by a cgroup quota (rounded
    down: a quota of 1.5 CPUs gives 1); at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, self_cgroup)
    if limit is not None:
        count = min(count, int(limit))
    return max(1, count)
