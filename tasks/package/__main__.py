"""`python -m tasks.package`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.package import run

sys.exit(main("package", run))
