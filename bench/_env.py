"""The machine, the interpreters, and the venv that holds Syne Tune."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SYNE_VENV = BENCH_DIR / ".venv-syne"
SYNE_REQUIREMENT = "syne-tune==0.16.*"
# What `from syne_tune.backend import LocalBackend` and its pause path need,
# found by importing it in a bare venv: numpy and dill at import, psutil in
# its kill path. pandas and the rest of its declared dependencies are not used.
SYNE_RUNTIME_DEPS = ("numpy", "dill", "psutil")


class SetupError(RuntimeError):
    """The Syne Tune venv could not be made or used."""


# Compiled ahead by ``compile_bytecode``: the package, the harness and the
# example scripts, every file the contenders' processes import from this tree.
COMPILED_FOLDERS = ("localbackend", "bench", "entrypoints")


def compile_bytecode(work_dir: Path) -> str:
    """Write the bytecode of this tree's modules, as ``pip install`` does for a package.

    Every other module a contender imports (the standard library, Syne Tune,
    Ray) was installed with its bytecode. Without this, an interpreter that
    may not write bytecode (``PYTHONDONTWRITEBYTECODE``, a read-only tree)
    compiles localbackend's modules from source in every driver, supervisor
    and trial, and the bench would time the compiler. ``py_compile`` writes
    the files whatever that setting says. ``work_dir`` (the scratch folder)
    and any venv are left alone. Returns the line for the report.
    """
    import compileall

    ok = True
    for folder in COMPILED_FOLDERS:
        for parent, folders, _ in os.walk(REPO / folder):
            # Not the venvs and scratch folders kept under bench/.
            folders[:] = [
                name for name in folders
                if not name.startswith((".", "__"))
                and not (Path(parent) / name / "pyvenv.cfg").exists()
                and Path(parent, name).resolve() != work_dir.resolve()
            ]
            ok = compileall.compile_dir(parent, maxlevels=0, quiet=2) and ok
    setting = (
        " (this environment sets PYTHONDONTWRITEBYTECODE, so nothing else would write it)"
        if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    )
    state = "compiled ahead" if ok else "compiled ahead with errors (some load from source)"
    names = ", ".join(COMPILED_FOLDERS)
    return f"Bytecode: {names} {state} with compileall, as pip does on install{setting}"


def _syne_version(python: Path) -> str:
    probe = subprocess.run(
        [str(python), "-c",
         "import importlib.metadata as m, syne_tune.backend; print(m.version('syne-tune'))"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    if probe.returncode != 0:
        raise SetupError(
            f"{python} cannot import syne_tune.backend:\n{probe.stderr.strip()[-2000:]}"
        )
    return probe.stdout.strip()


def ensure_syne(python: str | None, install: bool, log: list[str]) -> tuple[Path, str]:
    """The interpreter that runs Syne Tune, creating ``bench/.venv-syne`` if needed."""
    if python is not None:
        chosen = Path(python)
    else:
        chosen = SYNE_VENV / "bin" / "python"
        if not chosen.exists():
            if not install:
                raise SetupError(
                    f"{SYNE_VENV} does not exist; run without --no-install to create it, "
                    "or pass --syne-python."
                )
            _create_syne_venv(log)
    version = _syne_version(chosen)
    if not version.startswith("0.16"):
        raise SetupError(f"{chosen} has syne-tune {version}, the bench compares against 0.16")
    return chosen, version


def _create_syne_venv(log: list[str]) -> None:
    python = SYNE_VENV / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", str(SYNE_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", SYNE_REQUIREMENT],
        [str(python), "-m", "pip", "install", "--quiet", *SYNE_RUNTIME_DEPS],
    ]
    for step in steps:
        log.append(" ".join(step))
        print("bench: " + " ".join(step), file=sys.stderr, flush=True)
        done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=900)
        if done.returncode != 0:
            raise SetupError(f"`{' '.join(step)}` failed:\n{done.stderr.strip()[-2000:]}")


def package_versions(python: Path, names: tuple[str, ...]) -> str:
    code = (
        "import importlib.metadata as m, sys\n"
        "print(', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
    )
    probe = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=False, timeout=60
    )
    return probe.stdout.strip() if probe.returncode == 0 else "unknown"


def filesystem_of(path: Path) -> str:
    """Type and mount point of the filesystem holding ``path``, from /proc/mounts."""
    target = str(path.resolve())
    best = ("", "unknown", "")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type, device)
    except OSError:
        pass
    return f"{best[1]} (mounted at {best[0]} from {best[2]})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_lines(work_dir: Path) -> list[str]:
    cores = os.cpu_count()
    from localbackend._cores import usable_cores

    usable = usable_cores()  # the affinity, capped by a cgroup CPU quota
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    changed = _git("status", "--porcelain", "--", "localbackend")
    dirty = " with uncommitted changes" if changed else ""
    return [
        f"Machine: {cores} cores ({usable} usable), {_cpu_model()}, {_memory()} RAM, "
        f"Linux {platform.release()}",
        f"Python: {platform.python_version()} ({sys.executable})",
        f"localbackend: commit {commit}{dirty}; "
        f"{package_versions(Path(sys.executable), ('localbackend', 'psutil', 'orjson'))}",
        f"Work folder filesystem: {filesystem_of(work_dir)}",
    ]
