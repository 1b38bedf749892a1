"""tools/check_bazel_targets.py on a made-up workspace, with a fake `bazel` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECKER = Path(__file__).absolute().with_name("check_bazel_targets.py")


def make_tree(root: Path) -> None:
    for path in [
        "WORKSPACE",
        "top_test.py",
        "pkg/BUILD.bazel",
        "pkg/a_test.py",
        "pkg/helper.py",
        "pkg/sub/b_test.py",
        "venv/pyvenv.cfg",
        "venv/lib/site_test.py",  # a virtual environment
        ".nox/x_test.py",  # hidden
        "bazel-out/y_test.py",  # Bazel's output link
        "ignored/z_test.py",  # in .bazelignore
        "nested/WORKSPACE",
        "nested/w_test.py",  # another workspace
    ]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("")
    (root / ".bazelignore").write_text("ignored\n")


def check(root: Path, labels: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs the checker with a fake bazel whose query prints `labels`."""
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    bazel = root / "fake_bazel"
    bazel.write_text(f"#!{sys.executable}\nprint(open({str(root / 'labels.txt')!r}).read())\n")
    bazel.chmod(0o755)
    return subprocess.run(
        [sys.executable, str(CHECKER), "--workspace", str(root), "--bazel", str(bazel)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_reports_test_files_that_no_target_runs(tmp_path: Path) -> None:
    make_tree(tmp_path)
    result = check(tmp_path, ["//pkg:a_test.py", "@//tools:runner.py", "@other//:top_test.py"])
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "pkg/sub/b_test.py: not a Bazel test target (no pytest_suite/pytest_test in its package?)",
        "top_test.py: not a Bazel test target (no pytest_suite/pytest_test in its package?)",
    ]


def test_passes_when_every_test_file_is_a_target(tmp_path: Path) -> None:
    make_tree(tmp_path)
    result = check(tmp_path, ["//:top_test.py", "//pkg:a_test.py", "//pkg:sub/b_test.py"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 3 *_test.py files" in result.stdout
