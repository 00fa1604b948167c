"""Stage `train`: fit the configured model; resumable per epoch, DDP under torchrun, CUDA with autocast when present.

The code is in stage.py (the core and its shell) and the modules beside it; this file only re-exports it.
"""

from tasks.train.stage import (
    TrainResult,
    RunHooks,
    train,
    run,
)

__all__ = ["TrainResult", "RunHooks", "train", "run"]
