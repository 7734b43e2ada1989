"""The README's code runs as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_python_example_runs(tmp_path: Path) -> None:
    [example] = [
        b for b in python_blocks() if b.startswith("from localbackend import LocalBackend")
    ]
    shutil.copytree(REPO / "entrypoints", tmp_path / "entrypoints")
    done = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "{0: 'Completed', 1: 'Completed'}", done.stdout
    epochs = [int(line.split()[1]) for line in lines[:-1] if line.startswith("1 ")]
    # Epoch 3 may end after the pause, in which case it is not delivered; the
    # resumed run carries on from the checkpoint either way, never from 1.
    assert epochs[:2] == [1, 2] and epochs[-1] == 6, done.stdout
    assert epochs == sorted(set(epochs)), "trial 1 started again from scratch"
    assert (tmp_path / "localbackend-runs").is_dir()


def test_every_test_file_named_in_the_guarantees_exists() -> None:
    section = README.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    for path in set(re.findall(r"`(tests/[\w/]+\.py)", section)):
        assert (REPO / path).exists(), path
