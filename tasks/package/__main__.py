"""`python -m tasks.package`: the stage as dvc.yaml runs it."""

import sys

from tasks.common.stage_host import hand_off

if (handed := hand_off("tasks.package")) is not None:  # the run's warm host ran it (tasks/common/stage_host.py)
    sys.exit(handed)

from tasks.common.stage_cli import main  # noqa: E402 - imported after the hand-off: the host had them already
from tasks.package import run  # noqa: E402

sys.exit(main("package", run))
