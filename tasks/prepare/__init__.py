"""Stage `prepare`: a seeded, stratified train/val/test split of the raw data, as model-ready arrays.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it, on
first use (tasks/common/exports.py), so that `python -m tasks.prepare` can hand its run to the warm host first.
"""

from typing import TYPE_CHECKING

from tasks.common.exports import on_first_use

if TYPE_CHECKING:  # (what type checkers and the import graph in tests/ read)
    from tasks.prepare.stage import PrepareResult, prepare, split_stratified, run

__all__ = ["PrepareResult", "prepare", "split_stratified", "run"]
__getattr__ = on_first_use(__name__, "stage", __all__)
