"""Stage `compress`: make pruned and int8 variants, measure each against fp32, ship the best within the budget.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.compress.stage import (
    BASELINE,
    OBJECTIVE_KEY,
    CompressResult,
    compress,
    choose,
    run,
)

__all__ = ["BASELINE", "OBJECTIVE_KEY", "CompressResult", "compress", "choose", "run"]
