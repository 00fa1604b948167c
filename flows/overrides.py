"""Per-run parameter overrides: dotted keys applied to params.yaml for one run, then the file is put back, byte for
byte, even after a kill (tasks/common/params_journal.py).

The file is edited with ruamel.yaml's round trip (comments and layout kept) and checked against
tasks/common/config.py before any stage runs, so a misspelt key or an ill-typed value fails the run at once.
DVC sees the overridden values like any edit (so exactly the stages that read them re-run), `train`
logs them with every other param and as the `pipeline.overrides` tag, and the params file each run
used is logged under `lineage/` so `mlops reproduce` can restore it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.common import params_journal
from tasks.common.errors import ConfigError


def overridden_text(original: str, overrides: dict[str, Any]) -> str:
    """params.yaml text with each `section.key[.sub]` set to its value (keys the file leaves at their defaults
    are added); whether the keys exist at all is for `applied` to check against tasks/common/config.py."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML()  # round trip: comments and key order survive
    tree = yaml.load(original)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for i, key in enumerate(parents):
            if key not in node:
                node[key] = CommentedMap()
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{'.'.join(parents[: i + 1])}' is a value, not a section")
        node[leaf] = value
    out = io.StringIO()
    yaml.dump(tree, out)
    return out.getvalue()


def parse_assignment(item: str) -> tuple[str, Any]:
    """`key=value` from a command line, the value read as YAML (20 → int, 0.5 → float, true → bool,
    [28, 28] → list, text → str)."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=20")
    return key.strip(), yaml.safe_load(value)


def checked(params_file: Path, overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """`overrides` if params.yaml with them applied is valid; else a ConfigError naming each bad key."""
    if not overrides:
        return overrides
    _checked_text(params_file.read_text(), overrides)
    return overrides


def _checked_text(original: str, overrides: dict[str, Any]) -> str:
    import yaml
    from pydantic import ValidationError

    from tasks.common.config import Params, problems

    text = overridden_text(original, overrides)
    try:
        Params.model_validate(yaml.safe_load(text))
    except ValidationError as err:
        raise ConfigError(f"overrides {json.dumps(overrides)} refused: {problems(err)}") from err
    return text


@contextmanager
def applied(params_file: Path, overrides: dict[str, Any] | None) -> Iterator[None]:
    """params.yaml with `overrides` for the duration of the block, checked first (a misspelt key or an ill-typed
    value is refused, naming it); the user's bytes are restored after. A journal (tasks/common/params_journal.py)
    holds them meanwhile, so a kill that skips the restore is undone at the next start."""
    if not overrides:
        yield
        return
    text = _checked_text(params_file.read_text(), overrides)
    params_journal.override(params_file, text, overrides)
    try:
        yield
    finally:
        params_journal.restore(params_file)
