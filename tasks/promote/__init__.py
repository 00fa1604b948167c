"""Stage `promote`: move `champion` to the version the gate let through, once its Bento has proved it serves.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it, on
first use (tasks/common/exports.py), so that `python -m tasks.promote` can hand its run to the warm host first.
"""

from typing import TYPE_CHECKING

from tasks.common.exports import on_first_use

if TYPE_CHECKING:  # (what type checkers and the import graph in tests/ read)
    from tasks.promote.stage import READINESS_BATCH, PromoteResult, promote, raw_rows, run

__all__ = ["READINESS_BATCH", "PromoteResult", "promote", "raw_rows", "run"]
__getattr__ = on_first_use(__name__, "stage", __all__)
