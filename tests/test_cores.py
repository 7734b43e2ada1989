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
    _write(mount / "a b", cpu__max="100000 100000")
    escaped = str(mount).replace(" ", "\\040")
    proc = _proc(tmp_path, "garbage\n0::/box/a b\n", [
        "not a mount line", f"1 0 0:27 /box {escaped} rw - cgroup2 cgroup2 rw",
    ])
    assert cpu_quota(proc) == 1.0
    (tmp_path / "2").mkdir()
    escaped_root = _proc(tmp_path / "2", "0::/box/a b\n", [
        f"1 0 0:27 /bo\\170 {escaped} rw - cgroup2 cgroup2 rw",  # "/box", \170 being "x"
    ])
    assert cpu_quota(escaped_root) == 1.0


def test_only_the_mount_that_holds_this_process_cgroup_is_read(tmp_path: Path) -> None:
    # A mount of another cgroup comes first (a sibling scope, and a sibling whose
    # name starts with ours): its quota is not ours. The whole tree comes last.
    other, sibling, whole = tmp_path / "other", tmp_path / "sibling", tmp_path / "whole"
    _write(other, cpu__max="10000 100000")
    _write(sibling, cpu__max="20000 100000")
    _write(whole / "system.slice" / "me.scope", cpu__max="max 100000")
    _write(whole / "system.slice", cpu__max="300000 100000")
    proc = _proc(tmp_path, "0::/system.slice/me.scope\n", [
        f"50 23 0:27 /system.slice/other.scope {other} rw - cgroup2 cgroup2 rw",
        f"51 23 0:27 /system.slice/me.scopex {sibling} rw - cgroup2 cgroup2 rw",
        f"30 23 0:27 / {whole} rw,nosuid shared:9 - cgroup2 cgroup2 rw",
    ])
    assert cpu_quota(proc) == 3.0


@pytest.mark.parametrize("cgroup", ["0::/../outside\n", "0::/elsewhere\n"])
def test_a_cgroup_no_mount_shows_counts_as_no_quota(tmp_path: Path, cgroup: str) -> None:
    # "/../outside": the process is outside its cgroup namespace's root; the
    # mount shows only /docker/abc, which does not hold "/elsewhere".
    mount = tmp_path / "cg"
    _write(mount, cpu__max="50000 100000")
    _write(mount / "outside", cpu__max="50000 100000")
    root = "/" if "outside" in cgroup else "/docker/abc"
    proc = _proc(tmp_path, cgroup, [f"1 0 0:27 {root} {mount} rw - cgroup2 cgroup2 rw"])
    assert cpu_quota(proc) is None


def test_v1_controllers_in_either_order_and_named_hierarchies(tmp_path: Path) -> None:
    mount, named = tmp_path / "cpuacct,cpu", tmp_path / "systemd"
    _write(mount / "job", cpu__cfs_quota_us="250000", cpu__cfs_period_us="100000")
    _write(named / "job", cpu__max="10000 100000")  # not a cpu controller: never read
    proc = _proc(tmp_path, "9:name=systemd:/job\n3:cpuacct,cpu:/job\n", [
        f"32 31 0:29 / {named} rw - cgroup cgroup rw,xattr,name=systemd",
        f"33 31 0:30 / {mount} rw - cgroup cgroup rw,cpuacct,cpu",
    ])
    assert cpu_quota(proc) == 2.5


def test_this_machine_reads_without_error() -> None:
    assert 1 <= usable_cores() <= AFFINITY
