"""Which GPUs this machine has, as the trials will see them."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from ..._files import which


def detect_gpus(environ: Mapping[str, str]) -> list[str]:
    """Device ids the trials may use, as ``CUDA_VISIBLE_DEVICES`` would list them.

    An inherited ``CUDA_VISIBLE_DEVICES`` is honoured; otherwise ``nvidia-smi``
    is asked, and no GPU is assumed when it is missing or fails.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    smi = which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "--list-gpus"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    count = sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    return [str(index) for index in range(count)]
