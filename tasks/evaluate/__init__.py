"""Stage `evaluate`: test-split metrics and plots, the model logged and registered, the gate against the champion.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.evaluate.stage import (
    EvaluateResult,
    evaluate,
    calibration,
    confused_pairs,
    metric_safe,
    predict_proba,
    classification_metrics,
    run,
)

__all__ = ["EvaluateResult", "evaluate", "calibration", "confused_pairs", "metric_safe", "predict_proba", "classification_metrics", "run"]
