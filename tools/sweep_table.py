"""The supported-versions table of docs/VERSIONS.md, from a sweep's output.

    nox -s sweep 2>&1 | tee sweep.log
    python -m tools.sweep_table sweep.log                 # Markdown table on stdout
    python -m tools.sweep_table --skips sweep.log         # plus skip reasons per version
    python -m tools.sweep_table junit-2.4.1.xml ...       # or pytest JUnit XML files

From a nox log it reads, per session: the torch version the session printed, pytest's
summary line (passed, failed, skipped, errors) and nox's verdict and duration; with `-ra`
(the sweep's default) also the skip reasons. From JUnit XML (`pytest --junitxml=...`), the
counts of each file's testsuite(s) and the skip messages; the torch version is taken from the
file name (`...-2.4.1.xml`) or the testsuite's properties.
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_SESSION_START = re.compile(r"nox > Running session (\S+)")
_SESSION_END = re.compile(
    r"nox > Session (\S+) (was successful|failed|was skipped)(?: in (.*?))?\.?$"
)
_TORCH = re.compile(r"^torch (\d+\.\d+\.\d+\S*)$")
_SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in ([\d.]+)s")
_COUNT = re.compile(r"(\d+) (\w+)")
_SKIP = re.compile(r"^SKIPPED \[(\d+)\] ([^:]+):(?:\d+:)? (.*)$")
_VERSION = re.compile(r"(\d+\.\d+\.\d+)")


@dataclass
class Run:
    session: str
    torch: str = "?"
    counts: Counter[str] = field(default_factory=Counter)
    pytest_s: float | None = None
    verdict: str = "?"
    duration: str = ""
    skips: Counter[str] = field(default_factory=Counter)

    @property
    def version(self) -> str:
        m = _VERSION.search(self.torch) or _VERSION.search(self.session)
        return m.group(1) if m else self.session


def parse_nox_log(text: str) -> list[Run]:
    runs: list[Run] = []
    run: Run | None = None
    for line in text.splitlines():
        line = line.rstrip()
        if m := _SESSION_START.search(line):
            run = Run(m.group(1))
            runs.append(run)
        elif run is None:
            continue
        elif m := _SESSION_END.search(line):
            run.verdict = {"was successful": "pass", "failed": "FAIL"}.get(m.group(2), "skip")
            run.duration = m.group(3) or ""
        elif m := _TORCH.match(line):
            run.torch = m.group(1)
        elif m := _SUMMARY.match(line):
            run.counts = Counter({k: int(n) for n, k in _COUNT.findall(m.group(1))})
            run.pytest_s = float(m.group(2))
        elif m := _SKIP.match(line):
            run.skips[_normalize(m.group(3))] += int(m.group(1))
    return runs


def parse_junit(path: Path) -> Run:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    run = Run(path.stem)
    total = failures = errors = skipped = 0
    seconds = 0.0
    for s in suites:
        total += int(s.get("tests", 0))
        failures += int(s.get("failures", 0))
        errors += int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
        seconds += float(s.get("time", 0))
        for prop in s.iter("property"):
            if prop.get("name") == "torch":
                run.torch = prop.get("value", "?")
        for case in s.iter("testcase"):
            skip = case.find("skipped")
            if skip is not None:
                run.skips[_normalize(skip.get("message", ""))] += 1
    run.counts = Counter(
        passed=total - failures - errors - skipped, failed=failures, error=errors, skipped=skipped
    )
    run.pytest_s = seconds
    run.verdict = "pass" if failures + errors == 0 else "FAIL"
    if run.torch == "?" and (m := _VERSION.search(path.name)):
        run.torch = m.group(1)
    return run


def _normalize(reason: str) -> str:
    """One line per kind of skip: drop the stream/version names that differ per test."""
    reason = reason.removeprefix("Skipped: ")
    reason = re.sub(r"\(stream written by torch [\d.]+\)", "(stream written by torch X)", reason)
    reason = re.sub(r"^torch \d+\.\d+\.\d+\S* has no", "this torch has no", reason)
    return reason.strip()


def table(runs: list[Run], skips: bool = False) -> str:
    lines = [
        "| torch | build | result | passed | failed | errors | skipped | pytest | session |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        c = r.counts
        build = r.torch.partition("+")[2] or "-"
        pytest_s = f"{r.pytest_s:.0f} s" if r.pytest_s is not None else "-"
        lines.append(
            f"| {r.version} | {build} | {r.verdict} | {c['passed']} | {c['failed']} | "
            f"{c['error'] + c['errors']} | {c['skipped']} | {pytest_s} | {r.duration or '-'} |"
        )
    if skips:
        for r in runs:
            if r.skips:
                lines.append(f"\nSkipped on {r.version}:\n")
                for reason, n in sorted(r.skips.items(), key=lambda kv: (-kv[1], kv[0])):
                    lines.append(f"- {n} x {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="nox logs or JUnit XML files")
    parser.add_argument("--skips", action="store_true", help="list skip reasons per version")
    args = parser.parse_args(argv)
    runs: list[Run] = []
    for f in args.files:
        if f.suffix == ".xml":
            runs.append(parse_junit(f))
        else:
            runs.extend(parse_nox_log(f.read_text(errors="replace")))
    if not runs:
        print("no sessions found", file=sys.stderr)
        return 1
    print(table(runs, args.skips))
    return 0 if all(r.verdict == "pass" for r in runs) else 2


if __name__ == "__main__":
    sys.exit(main())
