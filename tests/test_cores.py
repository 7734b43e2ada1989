"""The cores this process may use: affinity capped by a cgroup CPU quota (``_cores``).

Each test writes a ``/proc/self``-like folder (``cgroup`` and ``mountinfo``)
and the cgroup files it points at, as the kernel lays them out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localbackend._cores import cpu_quota, usable_cores

AFFINITY = len(os.sched_getaffinity(0))


def _proc(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("".join(line + "\n" for line in mounts))
    return proc


def _write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text + "\n")


def test_cgroup_v2_takes_the_tightest_quota_of_the_cgroup_and_its_ancestors(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "unified"
    _write(mount / "user.slice" / "job", cpu__max="max 100000")
    _write(mount / "user.slice", cpu__max="150000 100000")  # CPUQuota=150%
    _write(mount, cpu__max="400000 100000")
    proc = _proc(tmp_path, "0::/user.slice/job\n", [
        f"30 23 0:27 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
    ])
    assert cpu_quota(proc) == 1.5
    assert usable_cores(proc) == min(AFFINITY, 2)  # part of a core counts as one


def test_a_container_with_its_own_cgroup_namespace_reads_its_root(tmp_path: Path) -> None:
    # docker run --cpus=0.5: the container's cgroup is "/" of what it sees.
    mount = tmp_path / "cgroup"
    _write(mount, cpu__max="50000 100000")
    proc = _proc(tmp_path, "0::/\n", [f"1 0 0:27 / {mount} rw - cgroup2 cgroup2 rw"])
    assert cpu_quota(proc) == 0.5
    assert usable_cores(proc) == 1


def test_cgroup_v1_reads_the_cfs_quota_where_the_cpu_controller_is_mounted(
    tmp_path: Path,
) -> None:
    # Without a cgroup namespace the mount shows only the container's own
    # cgroup (its root field), where the hierarchy's path goes on below it.
    mount = tmp_path / "cpu,cpuacct"
    _write(mount, cpu__cfs_quota_us="200000", cpu__cfs_period_us="100000")
    _write(mount / "inner", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    proc = _proc(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc/inner\n", [
        f"40 31 0:30 /docker/abc {mount} rw,relatime - cgroup cgroup rw,cpu,cpuacct",
        f"41 31 0:31 /docker/abc {tmp_path / 'memory'} rw,relatime - cgroup cgroup rw,memory",
    ])
    assert cpu_quota(proc) == 2.0
    assert usable_cores(proc) == min(AFFINITY, 2)


def test_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    # A hybrid host: v1 cpu controller without a quota, v2 mounted beside it.
    cpu, unified = tmp_path / "cpu", tmp_path / "unified"
    _write(cpu, cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    _write(unified, cgroup__procs="1")
    proc = _proc(tmp_path, "1:cpu:/\n0::/\n", [
        f"32 31 0:29 / {cpu} rw,relatime - cgroup cgroup rw,cpu",
        f"39 31 0:36 / {unified} rw,relatime - cgroup2 cgroup2 rw",
    ])
    assert cpu_quota(proc) is None
    assert usable_cores(proc) == AFFINITY


@pytest.mark.parametrize("content", ["", "max", "abc 100000", "100000 0", "-5 100000", "1 2 3"])
def test_a_malformed_cpu_max_counts_as_no_quota(tmp_path: Path, content: str) -> None:
    mount = tmp_path / "cg"
    _write(mount, cpu__max=content)
    proc = _proc(tmp_path, "0::/\n", [f"1 0 0:27 / {mount} rw - cgroup2 cgroup2 rw"])
    assert cpu_quota(proc) is None
    assert usable_cores(proc) == AFFINITY


def test_unreadable_proc_files_and_odd_lines_count_as_no_quota(tmp_path: Path) -> None:
    assert usable_cores(tmp_path / "missing") == AFFINITY
    mount = tmp_path / "my cgroups"  # mountinfo writes the space as \040
    _write(mount, cpu__max="100000 100000")
    escaped = str(mount).replace(" ", "\\040")
    proc = _proc(tmp_path, "garbage\n0::/\n", [
        "not a mount line", f"1 0 0:27 / {escaped} rw - cgroup2 cgroup2 rw",
    ])
    assert cpu_quota(proc) == 1.0


def test_this_machine_reads_without_error() -> None:
    assert 1 <= usable_cores() <= AFFINITY
