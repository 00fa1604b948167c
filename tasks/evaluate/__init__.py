"""Stage `evaluate`: test-split metrics and plots, the model logged and registered, the gate against the champion.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it, on
first use (tasks/common/exports.py), so that `python -m tasks.evaluate` can hand its run to the warm host first.
"""

from typing import TYPE_CHECKING

from tasks.common.exports import on_first_use

if TYPE_CHECKING:  # (what type checkers and the import graph in tests/ read)
    from tasks.evaluate.stage import (EvaluateResult, calibration, classification_metrics, confused_pairs, evaluate,
                                      metric_safe, predict_proba, run)

__all__ = ["EvaluateResult", "evaluate", "calibration", "confused_pairs", "metric_safe", "predict_proba",
           "classification_metrics", "run"]
__getattr__ = on_first_use(__name__, "stage", __all__)
