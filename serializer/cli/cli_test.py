"""The command line as a whole: `--help` of every command, usage errors, and the demo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import serializer
from serializer.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(serializer.__file__)))
COMMANDS = ["inspect", "verify", "convert", "send", "recv", "demo"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "serializer", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


def test_help_exits_0() -> None:
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: serializer")
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (a subprocess each would add seconds, and `--help` runs no command)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: serializer {command}")


def test_python_m_serializer_demo_help() -> None:
    """`python -m serializer demo --help`, as the README's demo command line is spelled."""
    result = cli("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "--layers" in result.stdout and "--width" in result.stdout and "--quiet" in result.stdout


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2  # no command: the help, on stderr
    assert "usage: serializer" in capsys.readouterr().err
    for argv in (["nonsense"], ["inspect"], ["convert", "a.srlz"], ["recv", "notaport", "x"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv


def test_version() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0


def test_demo_progress_is_plain_lines_when_stderr_is_not_a_tty() -> None:
    """The smallest demo, all three methods; stderr is a pipe here."""
    result = cli("demo", "--layers", "1", "--width", "64")
    assert result.returncode == 0, result.stderr
    assert "verified: every tensor arrived bit for bit" in result.stdout
    assert "bit-exact" in result.stdout
    assert "\r" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if "serializer:" in line]
    assert progress, result.stderr  # the receiver's progress: plain lines
    assert progress[-1].endswith("(done)")
    assert "100%" in progress[-1]


def test_demo_quiet_shows_no_progress() -> None:
    result = cli("demo", "--layers", "1", "--width", "64", "--methods", "serializer", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    assert "(done)" not in result.stderr
