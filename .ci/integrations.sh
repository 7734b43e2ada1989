#!/usr/bin/env bash
# Install the tuner extras into a venv and run the integration tests against
# the real Syne Tune, Optuna, SMAC and Ax.
#
#   bash .ci/integrations.sh .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/integrations.sh /path/to/venv/bin/python}"
start=$SECONDS

# torch first, and pinned: 2.13.0 is the CPU build this machine keeps on disk.
# Ax needs torch (through BoTorch); once it is installed, nothing asks pip for
# another torch, so no CUDA build of several GB is downloaded.
"$python" -m pip install --quiet torch==2.13.0
"$python" -m pip install --quiet -e ".[test,syne-tune,optuna,smac,ax]"

# An extra missing from pyproject.toml installs nothing and only warns; the
# tests would then all be skipped. Fail instead.
"$python" - <<'PY'
import importlib
import sys

missing = []
for module in ("syne_tune", "optuna", "smac", "ax", "torch"):
    try:
        importlib.import_module(module)
    except ImportError as err:
        missing.append(f"{module} ({err})")
if missing:
    sys.exit("integration extras not installed: " + ", ".join(missing))
import torch

if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build; install torch==2.13.0 first")
PY
echo "integration extras installed in $((SECONDS - start)) s"

"$python" -m pytest tests/integrations -m integration -q
echo "integration run took $((SECONDS - start)) s"
