"""`python -m tasks.promote`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.promote import run

sys.exit(main("promote", run))
