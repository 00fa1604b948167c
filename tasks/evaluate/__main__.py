"""`python -m tasks.evaluate`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.evaluate import run

sys.exit(main("evaluate", run))
