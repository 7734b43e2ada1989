"""Names shared by the backend and the code that runs inside a trial.

Everything a trial process and the driver must agree on lives here: the
environment variables the backend sets, the result fields it fills in, and
the names used inside a checkpoint folder. Both sides import this module, so
it must stay free of imports beyond the standard library.
"""

from __future__ import annotations

from typing import Final

# Environment variables set for every trial process.
ENV_TRIAL_ID: Final = "LOCALBACKEND_TRIAL_ID"
ENV_TRIAL_DIR: Final = "LOCALBACKEND_TRIAL_DIR"
ENV_CHECKPOINT_DIR: Final = "LOCALBACKEND_CHECKPOINT_DIR"
ENV_RESULTS_FILE: Final = "LOCALBACKEND_RESULTS_FILE"
ENV_CONFIG_FILE: Final = "LOCALBACKEND_CONFIG_FILE"
# Number of results earlier runs of this trial reported, so that the
# iteration counter carries on across a pause and resume.
ENV_ITERATION_START: Final = "LOCALBACKEND_ITERATION_START"
# Unix time at which the backend launched this run of the trial.
ENV_RUN_START_TIME: Final = "LOCALBACKEND_RUN_START_TIME"
# How many checkpoints ``checkpoint.save()`` keeps at most: the backend's
# ``keep_checkpoints`` policy.
ENV_KEEP_CHECKPOINTS: Final = "LOCALBACKEND_KEEP_CHECKPOINTS"
# Set by ``localbackend check --preload`` only: a folder where each warm run
# writes the modules its script imported after the fork, as
# ``<trial>-<run>.json``. The keeper takes it out of the trial's environment
# and hands it to the warm child, so that no script sees it.
ENV_WARM_IMPORTS: Final = "LOCALBACKEND_WARM_IMPORTS"

# Variables that tell numeric libraries how many threads to use: set for
# each trial by ``threads_per_trial`` (or ``cpus_per_trial``), and read by
# the libraries when they load.
THREAD_COUNT_VARIABLES: Final = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "RAYON_NUM_THREADS",
)

# Result fields, named as Syne Tune names them so its schedulers read them.
ST_WORKER_TIMESTAMP: Final = "st_worker_timestamp"
ST_WORKER_TIME: Final = "st_worker_time"
ST_WORKER_ITER: Final = "st_worker_iter"

# Command-line options added for Syne Tune compatibility.
ST_CHECKPOINT_DIR_ARG: Final = "st_checkpoint_dir"
ST_CONFIG_JSON_ARG: Final = "st_config_json_filename"

# Prefix of the result lines Syne Tune's Reporter prints on stdout.
TUNE_METRIC_PREFIX: Final = b"[tune-metric]:"

# Inside a checkpoint folder: a published checkpoint is a sub-folder named
# CHECKPOINT_PREFIX + zero-padded sequence number; it appears only by an
# atomic rename of a folder whose name starts with CHECKPOINT_TMP_PREFIX.
CHECKPOINT_PREFIX: Final = "ckpt-"
CHECKPOINT_TMP_PREFIX: Final = ".tmp-ckpt-"
