"""No shell, no path from a config, no symlink followed out of a checkpoint, private folders."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import pytest

from localbackend import CheckpointCopyError, LocalBackend
from tests.helpers import drain

PRINT_ARGS = """
import json, os, sys
from pathlib import Path
Path(os.environ["LOCALBACKEND_TRIAL_DIR"], "argv.json").write_text(json.dumps(sys.argv[1:]))
"""


def test_config_values_never_reach_a_shell_or_a_path(tmp_path: Path) -> None:
    script = tmp_path / "trial.py"
    script.write_text(PRINT_ARGS)
    canary = tmp_path / "pwned"
    hostile = {
        "cmd": f"$(touch {canary})",
        "quote": f"'; touch {canary}; '",
        "path": "../../../../outside",
        "nul_free_newline": f"x\ntouch {canary}",
    }
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial(hostile)
        drain(backend, [0])
        argv = json.loads((backend.trial_dir(0) / "argv.json").read_text())
    assert argv[: 2 * len(hostile)] == [w for k, v in hostile.items() for w in (f"--{k}", v)]
    assert not canary.exists()
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert all(p.parts[0] in ("exp", "trial.py") for p in written), written


def test_copy_checkpoint_copies_symlinks_as_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the checkpoint")
    script = tmp_path / "trial.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from localbackend import checkpoint
        with checkpoint.save() as folder:
            (folder / "weights.bin").write_bytes(b"w")
            os.symlink({str(secret)!r}, folder / "link-out")
            os.symlink("weights.bin", folder / "link-in")
    """))
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({})
        drain(backend, [0])
        backend.copy_checkpoint(0, 1)
        copied = next((backend.experiment_dir / "1" / "checkpoints").glob("ckpt-*"))
        assert (copied / "link-out").is_symlink()
        assert os.readlink(copied / "link-out") == str(secret)
        assert (copied / "link-in").is_symlink()
        assert (copied / "weights.bin").read_bytes() == b"w"
        assert not (copied / "weights.bin").is_symlink()


def test_a_checkpoint_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ckpt-00000001").mkdir()
    (outside / "ckpt-00000001" / "data").write_text("x")
    script = tmp_path / "trial.py"
    script.write_text("")
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({})
        drain(backend, [0])
        os.symlink(outside, backend.trial_dir(0) / "checkpoints")
        with pytest.raises(CheckpointCopyError, match="symbolic link"):
            backend.copy_checkpoint(0, 1)
        assert not (backend.experiment_dir / "1" / "checkpoints").exists()


def test_experiment_and_trial_folders_are_private(tmp_path: Path) -> None:
    script = tmp_path / "trial.py"
    script.write_text("")
    with LocalBackend(script) as backend:  # the default folder under ./localbackend-runs
        backend.start_trial({})
        drain(backend, [0])
        assert backend.experiment_dir.parent == Path.cwd() / "localbackend-runs"
        for folder in (backend.experiment_dir, backend.trial_dir(0)):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for name in ("experiment.json", "journal.jsonl"):
            assert stat.S_IMODE((backend.experiment_dir / name).stat().st_mode) == 0o600
