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


def _imports(module: Path) -> set[str]:
    """The localbackend modules that ``module`` imports: at the top, in functions, for types."""
    parts = module.relative_to(PACKAGE.parent).with_suffix("").parts
    if module.name == "__init__.py":
        name = package = ".".join(parts[:-1])
    else:
        name = ".".join(parts)
        package = ".".join(parts[:-1])
    tree = ast.parse(module.read_text(), filename=str(module))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from .. import _protocol`` imports that module; ``from ._x import y``
            # imports ``_x``.
            submodules = {f"{target}.{alias.name}" for alias in node.names} & MODULES
            found.update(submodules or {target})
    return {f for f in found if f.split(".")[0] == "localbackend" and f != name}


def _module_paths() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = relative.parts[:-1] if path.name == "__init__.py" else relative.parts
        modules[".".join(parts)] = path
    return modules


MODULES = set(_module_paths())


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path) & MODULES for name, path in _module_paths().items()}


def test_there_is_no_import_cycle_in_the_package() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# "One module, one idea": a module that grows past this is holding two.
MAX_MODULE_LINES = 450


def test_no_module_holds_more_than_one_idea_by_size() -> None:
    long = {
        path.relative_to(PACKAGE).as_posix(): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules longer than {MAX_MODULE_LINES} lines: {long}"
