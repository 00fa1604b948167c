"""`python -m tasks.prepare`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.prepare import run

sys.exit(main("prepare", run))
