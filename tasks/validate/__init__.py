"""Stage `validate`: a Great Expectations suite over each split; a failure names every broken expectation.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.validate.stage import (
    Check,
    ValidateResult,
    validate,
    run,
)

__all__ = ["Check", "ValidateResult", "validate", "run"]
