"""The Python examples of README.md and docs/*.md run as written.

Every ```python block runs, each in a fresh process, in one temporary directory per file
(so a block may use the files an earlier block of its file wrote), after the file's setup
code. Markers, as HTML comments (invisible on GitHub), on the line just before a block:

    <!-- example: skip (why) -->   not run: a signature, or a sketch with placeholders
    <!-- example: ranks=N -->      run on N ranks with torchrun (gloo on loopback); each
                                   leaves with os._exit(0) after it (see below)

and anywhere in the file, code that runs before each of its blocks (defining what the
examples take as given, e.g. a model or an open socket):

    <!-- example-setup
    import torch
    model = torch.nn.Linear(4, 4)
    -->
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(
    r"(?:<!-- example: (?P<marker>[^\n]*?) -->\n)?```python\n(?P<code>.*?)\n```", re.S
)
_SETUP = re.compile(r"<!-- example-setup\n(?P<code>.*?)\n-->", re.S)


def _examples() -> list[tuple[Path, int, str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("code"))
            found.append((doc, line, m.group("marker") or "", m.group("code")))
    return found


EXAMPLES = _examples()


def test_every_doc_with_examples_is_found() -> None:
    names = {doc.name for doc, *_ in EXAMPLES}
    assert {"README.md", "DISTRIBUTED.md", "SECURITY.md"} <= names
    for doc, line, marker, _ in EXAMPLES:
        assert marker == "" or marker.startswith(("skip (", "ranks=")), f"{doc.name}:{line}"


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {doc.name: tmp_path_factory.mktemp(doc.stem) for doc in DOCS}


@pytest.mark.slow
@pytest.mark.parametrize(
    "doc, line, marker, code",
    EXAMPLES,
    ids=[f"{doc.name}:{line}" for doc, line, _, _ in EXAMPLES],
)
def test_example_runs(
    doc: Path, line: int, marker: str, code: str, workdirs: dict[str, Path]
) -> None:
    if marker.startswith("skip"):
        pytest.skip(f"marked {marker}")
    setup = "\n".join(m.group("code") for m in _SETUP.finditer(doc.read_text()))
    cwd = workdirs[doc.name]
    script = cwd / f"example_{line}.py"
    # A rank leaves with os._exit once its example is done, as testing/distributed.py's
    # ranks do: gloo's destructors can abort a process at exit when its peers have gone.
    leave = "\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n" if "ranks=" in marker else ""
    script.write_text(f"{setup}\n{code}\n{leave}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, str(script)]
    if marker.startswith("ranks="):
        ranks = int(marker.removeprefix("ranks="))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={ranks}", str(script),
        ]  # fmt: skip
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"{doc.name}:{line} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
