"""The package keeps its own rules: every file name the backend writes is defined once."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "localbackend"

# Names that are not files the backend or the tuner write: the default file
# name a trial script gives ``checkpoint.save_json``, and the suffix of the
# control requests (named by their sender).
NOT_OURS = {("checkpoint.py", "state.json"), ("cli/_control.py", ".json")}
SUFFIXES = (".json", ".jsonl", ".log", ".csv", ".lock")


def test_every_file_name_is_defined_once_in_paths() -> None:
    outside = []
    for module in sorted(PACKAGE.rglob("*.py")):
        relative = module.relative_to(PACKAGE).as_posix()
        if relative == "_paths.py":
            continue
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if (
                isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value.endswith(SUFFIXES) and " " not in node.value
                and (relative, node.value) not in NOT_OURS
            ):
                outside.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert outside == [], "file names outside localbackend/_paths.py:\n" + "\n".join(outside)
