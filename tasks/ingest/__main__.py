"""`python -m tasks.ingest`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_cli import main
from tasks.ingest import run

sys.exit(main("ingest", run))
