"""What a normal run's log may hold."""

from __future__ import annotations

import re


def assert_clean_log(text: str, what: str) -> None:
    """What a user reads from a normal run: no traceback, no ERROR line, no hint of work the flow does itself,
    no library's chatter at INFO."""
    assert "Traceback" not in text, f"{what}: a traceback in a normal run:\n{text[-3000:]}"
    errors = [line for line in text.splitlines() if re.search(r"\bERROR\b", line)]
    assert not errors, f"{what}: ERROR lines in a normal run: {errors[:5]}"
    for chatter in ("git add dvc.lock", "dvc config core.autostage", "INFO great_expectations", "INFO mlflow."):
        assert chatter not in text, f"{what}: {chatter!r} in the log"
