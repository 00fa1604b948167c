"""Stage `train`: fit the configured model; resumable per epoch, DDP under torchrun, CUDA with autocast when present.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it, on
first use (tasks/common/exports.py), so that `python -m tasks.train` can hand its run to the warm host first.
"""

from typing import TYPE_CHECKING

from tasks.common.exports import on_first_use

if TYPE_CHECKING:  # (what type checkers and the import graph in tests/ read)
    from tasks.train.stage import TrainResult, RunHooks, train, run

__all__ = ["TrainResult", "RunHooks", "train", "run"]
__getattr__ = on_first_use(__name__, "stage", __all__)
