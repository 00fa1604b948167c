"""Batch scoring: new data (a table file or a folder of images, no labels) through the champion's shipped model.

The code is in scoring.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from jobs.score.scoring import (
    TooManyBadRows,
    ScoreResult,
    version_dir,
    prepare,
    score,
    predictions_of,
)

__all__ = ["TooManyBadRows", "ScoreResult", "version_dir", "prepare", "score", "predictions_of"]
