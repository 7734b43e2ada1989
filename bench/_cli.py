"""The orchestrator: run every job in a fresh driver, then print and write the report."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench._contenders import optional_contenders
from bench._env import (
    BENCH_DIR,
    REPO,
    SetupError,
    compile_bytecode,
    ensure_syne,
    machine_lines,
    package_versions,
)
from bench._plan import PROFILES, Job, JobResult, Profile
from bench._stats import Check, Section, Table

CONTENDERS = ("floor", "localbackend", "syne", "ray")

# Scenario name -> (module in bench.scenarios, its summary function), in the
# issue's order. Memory is read from the throughput scenario's drivers.
SCENARIOS: dict[str, tuple[str, str]] = {
    "throughput": ("throughput", "summarize"),
    "ingestion": ("ingestion", "summarize"),
    "pause": ("pause_resume", "summarize"),
    "memory": ("throughput", "summarize_memory"),
    "checkpoint": ("checkpoint_copy", "summarize"),
    "idle": ("idle", "summarize"),
    "scale": ("scale", "summarize"),
    "dask": ("dask_cluster", "summarize"),
    "end_to_end": ("end_to_end", "summarize"),
    "warm_start": ("warm_start", "summarize"),
}

ANALYSIS = BENCH_DIR / "analysis.md"

WHAT_EACH_READS = """\
## What each contender reads

- **floor**: nothing but exit statuses, except where a scenario needs results: then a
  bare byte-offset reader of the trial's output (`bench/drivers/_common.py` `JsonlTail`).
- **localbackend**: `[tune-metric]: {json}` lines from the trial's `stdout.log`, and JSON
  lines from its `results.jsonl` (`$LOCALBACKEND_RESULTS_FILE`, what `localbackend.report`
  writes). The ingestion scenario measures both; every other scenario uses stdout.
- **syne-tune 0.16**: `[tune-metric]: {json}` lines from the trial's `std.out`, re-read from
  the start on every `fetch_status_results`.

The trial scripts are in `bench/trials/` and use only the standard library, so every
contender runs exactly the same processes.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure localbackend against the floor (Popen + waitpid) and Syne "
        "Tune's LocalBackend 0.16, and write bench/RESULTS.md.",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (~1 minute)")
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default=None,
        help="sizes and counts (default: full, the issue's numbers; --quick means quick)",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="SCENARIO",
        help=f"run only these scenarios (repeat or comma-separate): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS),
        help="comma-separated subset of floor,localbackend,syne,ray (default: all; ray and "
        "Syne Tune's Tuner run only in the end_to_end scenario)",
    )
    parser.add_argument(
        "--syne-python", default=None,
        help="interpreter with syne-tune 0.16 installed (default: bench/.venv-syne, "
        "created on first use)",
    )
    parser.add_argument(
        "--no-install", action="store_true",
        help="do not create bench/.venv-syne; leave Syne Tune out if it is missing",
    )
    parser.add_argument(
        "--rounds", type=int, default=None,
        help="fresh drivers per contender in the repeated scenarios (default: 3, quick: 1)",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=None,
        help="shorten the idle scenario (the full run uses the issue's 30 s)",
    )
    parser.add_argument(
        "--output", default=str(BENCH_DIR / "RESULTS.md"),
        help="where to write the report; '-' to write none (default: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--workdir", default=str(BENCH_DIR / ".work"),
        help="scratch folder for experiments (default: bench/.work, removed afterwards)",
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the scratch folders for inspection"
    )
    parser.add_argument(
        "--render", metavar="RESULTS_JSON", default=None,
        help="run nothing: rewrite the report from the raw results a run saved beside it "
        "(e.g. bench/results.json), for instance after editing bench/analysis.md",
    )
    return parser.parse_args(argv)


def selected_scenarios(only: list[str]) -> list[str]:
    names = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return [name for name in SCENARIOS if not names or name in names]


def _driver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return env


def run_job(
    job: Job, interpreter: Path, run_dir: Path, trial_python: str, keep: bool
) -> JobResult:
    slug = "".join(c if c.isalnum() else "-" for c in f"{job.scenario}-{job.label}-{job.round}")
    scratch = run_dir / slug
    scratch.mkdir(parents=True)
    params = {**job.params, "scratch": str(scratch), "trial_python": trial_python}
    job_path = run_dir / f"{slug}.job.json"
    result_path = run_dir / f"{slug}.result.json"
    log_path = run_dir / f"{slug}.log"
    job_path.write_text(
        json.dumps({"module": job.scenario, "contender": job.contender, "params": params})
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(interpreter), "-m", "bench._driver", str(job_path), str(result_path)],
            cwd=scratch, env=_driver_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log_tail = log_path.read_text(errors="replace")[-3000:]
    try:
        output: dict[str, Any] = json.loads(result_path.read_text())
    except FileNotFoundError:
        output = {"error": f"the driver exited with {proc.returncode} and wrote no result",
                  "process": {}}
    error = output.get("error")
    if error is not None:
        error = f"{error}\n{output.get('traceback', '')}\n{log_tail}".strip()
    if not keep:
        _set_aside(scratch, run_dir)
    return JobResult(job, output.get("measurements"), output.get("process", {}), error)


def _set_aside(scratch: Path, run_dir: Path) -> None:
    """Move a finished job's scratch folder aside, to be deleted with the run's folder.

    Deleted now, it would tax the next job. On ext4 without a journal (the
    bench host's root filesystem), a new inode is never one deleted in the
    last 60 seconds (360 while its inode table block is unwritten): each
    file created skips past every one recently deleted near it. A job that
    creates thousands of files right after another's were deleted would
    pay for that deletion, and the more files it creates, the more
    (``bench/analysis.md``, section 1).
    """
    trash = run_dir / "finished-jobs"
    trash.mkdir(exist_ok=True)
    try:
        scratch.rename(trash / scratch.name)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bench.scenarios.{name}")


def run(args: argparse.Namespace) -> tuple[dict[str, list[JobResult]], list[str], Profile]:
    profile = PROFILES[args.profile or ("quick" if args.quick else "full")]
    if args.idle_seconds is not None:
        profile = profile.replace(idle_seconds=args.idle_seconds)
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be at least 1")
        profile = profile.replace(rounds=args.rounds, checkpoint_rounds=args.rounds,
                                  e2e_rounds=args.rounds)
    scenarios = selected_scenarios(args.only)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        raise SystemExit(f"unknown contender(s) {', '.join(bad)}; choose from {CONTENDERS}")

    header: list[str] = []
    interpreters = {c: Path(sys.executable) for c in CONTENDERS}
    if "syne" in contenders:
        setup_log: list[str] = []
        try:
            syne_python, version = ensure_syne(args.syne_python, not args.no_install, setup_log)
        except SetupError as err:
            print(f"bench: leaving Syne Tune out: {err}", file=sys.stderr)
            header.append(f"Syne Tune: left out of this run ({err})")
            contenders.remove("syne")
        else:
            interpreters["syne"] = syne_python
            deps = package_versions(syne_python, ("numpy", "dill", "psutil"))
            header.append(f"Syne Tune: {version} in {syne_python.parent.parent} ({deps})")

    if "end_to_end" in scenarios:
        header += optional_contenders(contenders, interpreters, not args.no_install)
    else:
        contenders = [c for c in contenders if c != "ray"]

    work_root = Path(args.workdir).absolute()
    run_dir = work_root / f"run-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    header = [*machine_lines(run_dir), compile_bytecode(work_root), *header]
    results: dict[str, list[JobResult]] = {}
    try:
        modules_done: set[str] = set()
        for scenario in scenarios:
            module_name = SCENARIOS[scenario][0]
            if module_name in modules_done:
                continue
            modules_done.add(module_name)
            module = _module(module_name)
            shared: dict[str, Any] = {}
            if hasattr(module, "prepare"):
                shared = module.prepare(profile, run_dir, contenders)
            try:
                jobs = module.jobs(profile, contenders)
                results[module_name] = []
                for index, job in enumerate(jobs, 1):
                    job = Job(job.scenario, job.contender, job.label, job.round,
                              {**shared, **job.params}, job.timeout)
                    started = time.monotonic()
                    result = run_job(job, interpreters[job.contender], run_dir,
                                     sys.executable, args.keep_work)
                    took = time.monotonic() - started
                    status = "error" if result.error else "ok"
                    print(f"bench: [{scenario}] {index}/{len(jobs)} {job.label} "
                          f"round {job.round + 1}: {status} ({took:.1f} s)",
                          file=sys.stderr, flush=True)
                    if result.error:
                        print(result.error, file=sys.stderr)
                    results[module_name].append(result)
            finally:
                if hasattr(module, "cleanup"):
                    module.cleanup(shared)
    finally:
        if not args.keep_work:
            shutil.rmtree(run_dir, ignore_errors=True)
            try:
                work_root.rmdir()
            except OSError:
                pass
    return {name: results[SCENARIOS[name][0]] for name in scenarios}, header, profile


def summarize_all(results: dict[str, list[JobResult]], profile: Profile) -> list[Section]:
    sections = []
    for scenario, scenario_results in results.items():
        module_name, summarize = SCENARIOS[scenario]
        sections.append(getattr(_module(module_name), summarize)(scenario_results, profile))
    return sections


def save_raw(path: Path, results: dict[str, list[JobResult]], header: list[str],
             profile: Profile, command: str, took: float, date: str) -> None:
    raw = {
        "command": command, "took_s": took, "header": header, "profile": profile.name,
        "profile_values": dataclasses.asdict(profile),
        "date": date,
        "results": {
            scenario: [
                {"job": dataclasses.asdict(r.job), "measurements": r.measurements,
                 "process": r.process, "error": r.error}
                for r in scenario_results
            ]
            for scenario, scenario_results in results.items()
        },
    }
    path.write_text(json.dumps(raw, separators=(",", ":")) + "\n", encoding="utf-8")


def load_raw(path: Path) -> tuple[dict[str, list[JobResult]], list[str], Profile, str, float, str]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    values = dict(raw["profile_values"])
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    profile = Profile(**values)
    results = {
        scenario: [JobResult(Job(**r["job"]), r["measurements"], r["process"], r["error"])
                   for r in items]
        for scenario, items in raw["results"].items()
    }
    return results, raw["header"], profile, raw["command"], raw["took_s"], raw["date"]


def not_run(results: dict[str, list[JobResult]], profile: Profile) -> list[Section]:
    """The scenarios this run left out, summarized from no results: their targets."""
    sections = []
    done = {SCENARIOS[name] for name in results}
    for scenario, (module_name, summarize) in SCENARIOS.items():
        if scenario not in results and (module_name, summarize) not in done:
            sections.append(getattr(_module(module_name), summarize)([], profile))
    return sections


def target_table(sections: list[Section], left_out: Sequence[Section] = ()) -> Table:
    """Every target of the issue: those of this run's sections, then the scenarios left out."""
    table = Table(["scenario", "target", "this run", "verdict"])
    for section in sections:
        for check in section.checks:
            table.add(section.title.split(":")[0], check.name, check.detail, f"**{check.verdict}**")
    for section in left_out:
        for check in section.checks:
            table.add(section.title.split(":")[0], check.name, "scenario not in this run",
                      f"**{check.verdict}**")
    return table


def render(
    sections: list[Section], header: list[str], profile: Profile, command: str, took: float,
    for_file: bool, date: str, left_out: Sequence[Section] = (),
) -> str:
    parts = [
        "# Benchmark results",
        "",
        f"Run on {date} with `{command}` from the repository root "
        f"(profile `{profile.name}`), in {took / 60:.1f} minutes.",
        "",
        *[f"- {line}" for line in header],
        "",
        "Every figure is a median [min-max] over repeats, and every ratio compares medians "
        "measured in this same run: the machine is shared and noisy, so absolute numbers "
        "move between runs while ratios move much less.",
        "",
        "## Targets",
        "",
        target_table(sections, left_out).markdown(),
        "",
        WHAT_EACH_READS,
    ]
    parts += [section.markdown() for section in sections]
    if for_file and ANALYSIS.exists():
        parts += [ANALYSIS.read_text().strip(), ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        results, header, profile, command, took, date = load_raw(Path(args.render))
    else:
        words = sys.argv[1:] if argv is None else argv
        command = "python -m bench" + (" " + shlex.join(words) if words else "")
        started = time.monotonic()
        results, header, profile = run(args)
        took = time.monotonic() - started
        date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sections = summarize_all(results, profile)
    left_out = not_run(results, profile)
    print(render(sections, header, profile, command, took, for_file=False, date=date,
                 left_out=left_out))
    if args.output != "-":
        output = Path(args.output)
        output.write_text(
            render(sections, header, profile, command, took, for_file=True, date=date,
                   left_out=left_out),
            encoding="utf-8",
        )
        print(f"bench: wrote {output}", file=sys.stderr)
        if args.render is None:
            raw = output.with_name("results.json")
            save_raw(raw, results, header, profile, command, took, date)
            print(f"bench: wrote {raw} (raw results; --render {raw} rewrites the report)",
                  file=sys.stderr)
    failures = sum(len(section.errors) for section in sections)
    return 1 if failures else 0


__all__ = ["Check", "main"]
