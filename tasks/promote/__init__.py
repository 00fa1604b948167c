"""Stage `promote`: move `champion` to the version the gate let through, once its Bento has proved it serves.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.promote.stage import (
    READINESS_BATCH,
    PromoteResult,
    promote,
    raw_rows,
    run,
)

__all__ = ["READINESS_BATCH", "PromoteResult", "promote", "raw_rows", "run"]
