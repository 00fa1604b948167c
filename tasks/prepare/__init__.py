"""Stage `prepare`: a seeded, stratified train/val/test split of the raw data, as model-ready arrays.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.prepare.stage import (
    PrepareResult,
    prepare,
    split_stratified,
    run,
)

__all__ = ["PrepareResult", "prepare", "split_stratified", "run"]
