"""`python -m tasks.validate`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.validate import run

sys.exit(main("validate", run))
