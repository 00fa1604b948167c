"""`python -m tasks.train`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.train import run

sys.exit(main("train", run))
