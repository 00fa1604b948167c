"""Stage `compress`: make pruned and int8 variants, measure each against fp32, ship the best within the budget.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it, on
first use (tasks/common/exports.py), so that `python -m tasks.compress` can hand its run to the warm host first.
"""

from typing import TYPE_CHECKING

from tasks.common.exports import on_first_use

if TYPE_CHECKING:  # (what type checkers and the import graph in tests/ read)
    from tasks.compress.stage import BASELINE, OBJECTIVE_KEY, CompressResult, compress, choose, run

__all__ = ["BASELINE", "OBJECTIVE_KEY", "CompressResult", "compress", "choose", "run"]
__getattr__ = on_first_use(__name__, "stage", __all__)
