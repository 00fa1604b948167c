"""Sweeps: a parallel, resumable Optuna search over params.yaml's train.* and compress.* keys (`sweep.space`).

The code is in search.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from jobs.sweep.search import (
    SweepBusy,
    SweepResult,
    sweep,
    data_digest,
    default_name,
)

__all__ = ["SweepBusy", "SweepResult", "sweep", "data_digest", "default_name"]
