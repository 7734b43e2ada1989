"""The venvs of the end-to-end scenario's optional contenders: Syne Tune's Tuner, Ray Tune.

Each is made on first use under ``bench/`` and never in CI. Syne Tune's
Tuner needs pandas, which ``bench/.venv-syne`` leaves out on purpose (with
pandas installed, ``import syne_tune`` loads the Tuner and pandas, which would
change what the other scenarios measure of its backend), so it has a venv of
its own. A contender that cannot be installed is left out with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench._env import BENCH_DIR, SYNE_REQUIREMENT, SYNE_RUNTIME_DEPS, SetupError

SYNE_TUNER_VENV = BENCH_DIR / ".venv-syne-tuner"
RAY_VENV = BENCH_DIR / ".venv-ray"
# orjson: the trainable imports entrypoints/train_numpy.py, which imports localbackend.
RAY_REQUIREMENTS = ("ray[tune]", "numpy", "orjson")

VENVS: dict[str, tuple[Path, list[list[str]], str, str]] = {
    # contender -> (venv, pip install steps, import probe, distribution whose version counts)
    "syne_tuner": (
        SYNE_TUNER_VENV,
        [["--no-deps", SYNE_REQUIREMENT], [*SYNE_RUNTIME_DEPS, "pandas"]],
        "import syne_tune.tuner, syne_tune.optimizer.baselines",
        "syne-tune",
    ),
    "ray": (
        RAY_VENV, [list(RAY_REQUIREMENTS)],
        "import ray.tune, ray.tune.schedulers, numpy, orjson", "ray",
    ),
}


def _version(python: Path, probe: str, distribution: str) -> str:
    code = f"{probe}\nimport importlib.metadata as m\nprint(m.version({distribution!r}))"
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              check=False, timeout=300)
    except OSError as err:
        raise SetupError(f"{python} cannot run: {err}") from err
    if done.returncode != 0:
        raise SetupError(f"{python} cannot `{probe}`:\n{done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def ensure(contender: str, install: bool, log: list[str]) -> tuple[Path, str]:
    """The interpreter of ``contender``'s venv and its version, creating the venv if allowed."""
    venv, steps, probe, distribution = VENVS[contender]
    python = venv / "bin" / "python"
    if not python.exists():
        if not install:
            raise SetupError(f"{venv} does not exist; run without --no-install to create it")
        commands = [[sys.executable, "-m", "venv", str(venv)]]
        commands += [[str(python), "-m", "pip", "install", "--quiet", *step] for step in steps]
        for command in commands:
            log.append(" ".join(command))
            print("bench: " + " ".join(command), file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=1800)
            if done.returncode != 0:
                raise SetupError(
                    f"`{' '.join(command)}` failed:\n{done.stderr.strip()[-2000:]}"
                )
    return python, _version(python, probe, distribution)


def optional_contenders(
    contenders: list[str], interpreters: dict[str, Path], install: bool
) -> list[str]:
    """Set up the end-to-end contenders asked for; returns the report's header lines.

    ``syne`` brings in Syne Tune's Tuner (``syne_tuner``) and ``ray`` Ray
    Tune. One that cannot be set up is removed from ``contenders``, and the
    header says why.
    """
    header = []
    wanted = [("syne_tuner", "Syne Tune's Tuner")] if "syne" in contenders else []
    if "ray" in contenders:
        wanted.append(("ray", "Ray Tune"))
    for contender, name in wanted:
        log: list[str] = []
        try:
            python, version = ensure(contender, install, log)
        except SetupError as err:
            print(f"bench: leaving {name} out: {err}", file=sys.stderr)
            header.append(f"{name}: left out of this run ({err})")
            if contender in contenders:
                contenders.remove(contender)
            continue
        interpreters[contender] = python
        if contender not in contenders:
            contenders.append(contender)
        header.append(f"{name}: {version} in {python.parent.parent}")
    return header
