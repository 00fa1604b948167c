"""`python -m tasks.compress`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.compress import run

sys.exit(main("compress", run))
