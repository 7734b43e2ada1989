#!/usr/bin/env bash
# Install the tuner extras into a venv and run the integration tests and the
# conformance tests (Syne Tune's and Ax's own tests, tests/conformance) against
# the real Syne Tune, Optuna, SMAC and Ax; then the Syne Tune tests once more in
# a lean venv (syne-tune installed with --no-deps, localbackend[syne-tune-lean]).
#
#   bash .ci/integrations.sh .venv/bin/python
#
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes torch's CPU wheel
# from PyTorch's own index, as a user would. Without it, torch==2.13.0 is
# installed, which this CI machine keeps on disk as the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/integrations.sh /path/to/venv/bin/python}"
start=$SECONDS

# torch first: Ax needs it (through BoTorch); once it is installed, nothing
# asks pip for another torch, so no CUDA build of several GB is downloaded.
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    "$python" -m pip install --quiet torch --index-url "$TORCH_INDEX_URL"
else
    "$python" -m pip install --quiet torch==2.13.0
fi
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
    sys.exit(f"torch {torch.__version__} is a CUDA build; install its CPU wheel first")
PY
echo "integration extras installed in $((SECONDS - start)) s"

# tests/dask/test_integrations.py: the adapters on a Dask cluster (skipped without dask).
"$python" -m pytest tests/integrations tests/conformance tests/dask/test_integrations.py \
    -m integration -q
echo "integration and conformance run took $((SECONDS - start)) s"

# The lean Syne Tune install the README documents: the adapter, the Tuner and
# its schedulers without xgboost, scikit-learn and statsmodels.
lean="$(mktemp -d)/lean"
"$python" -m venv "$lean"
"$lean/bin/python" -m pip install --quiet --no-deps "syne-tune>=0.16,<0.17"
"$lean/bin/python" -m pip install --quiet -e ".[test,syne-tune-lean]"
"$lean/bin/python" - <<'PY'
import importlib.util
import sys

heavy = [name for name in ("xgboost", "sklearn", "statsmodels") if importlib.util.find_spec(name)]
if heavy:
    sys.exit(f"the lean Syne Tune install pulled in {heavy}")
PY
"$lean/bin/python" -m pytest tests/conformance/syne_tune tests/integrations/test_syne_tune_reload.py \
    -m integration -q
echo "lean Syne Tune run done; $((SECONDS - start)) s in all"
