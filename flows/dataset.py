"""Pointing the project at a dataset from the command line (`mlops run --data PATH [--label COL]
[--new-dataset]`, `make run DATA=... LABEL=...`).

`--data` writes ingest's keys into params.yaml (comments kept), so that the choice stays: `dvc repro`, the next
`make run` and scheduled runs all take the same data. `--new-dataset` archives the validation reference, whose
data contract would otherwise refuse a dataset with other classes, columns or image shape.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tasks.common.atomic import write_with
from tasks.common.errors import ConfigError
from tasks.common.layout import Layout

log = logging.getLogger(__name__)


def adopt(root: Path, data: str, label: str | None) -> dict:
    """Set ingest.path (relative to `root` when inside it), ingest.source: auto and ingest.label_column in params.yaml;
    returns the keys written."""
    from flows.overrides import checked, overridden_text

    path = Path(data).expanduser()
    absolute = path if path.is_absolute() else (Path.cwd() / path)
    if not absolute.exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    try:
        shown = str(absolute.resolve().relative_to(root.resolve()))
    except ValueError:
        shown = str(absolute.resolve())  # outside the project: DVC does not watch it (README "Your own data")
    keys = {"ingest.source": "auto", "ingest.path": shown, "ingest.label_column": label or ""}
    params_file = root / "params.yaml"
    checked(params_file, keys)
    text = overridden_text(params_file.read_text(), keys)
    write_with(params_file, lambda tmp: tmp.write_text(text))
    log.info("params.yaml: %s", ", ".join(f"{k}={v!r}" for k, v in keys.items()))
    return keys


def forget_contract(root: Path) -> Path | None:
    """Move the validation reference (drift statistics and data contract) aside; the next accepted version sets
    both anew. Returns where the old one went, or None when there was none."""
    reference = Layout(root).validation / "reference.json"  # where validate keeps it
    if not reference.is_file():
        return None
    archived = reference.with_name(f"reference.{time.strftime('%Y%m%d-%H%M%S')}.json")
    reference.rename(archived)
    log.info("archived the data contract and drift reference to %s", archived)
    return archived
