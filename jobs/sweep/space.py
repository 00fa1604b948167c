"""params.yaml's `sweep.space` as Optuna suggestions, and back to params.yaml keys."""

from __future__ import annotations

import json
from typing import Any

from tasks.common.config import Params, SweepDimension
from tasks.common.errors import ConfigError

SCALAR = (bool, int, float, str)


def suggest(trial, space: dict[str, SweepDimension], params: Params) -> dict[str, Any]:
    """One value per searched key, as the params.yaml override it becomes (`{"train.lr": 0.003, ...}`)."""
    values = {}
    for key, dim in space.items():
        if dim.choices:
            if all(isinstance(c, SCALAR) for c in dim.choices):
                values[key] = trial.suggest_categorical(key, list(dim.choices))
            else:  # a list (channel widths) is no Optuna category: its JSON text is
                values[key] = trial.suggest_categorical(key, [json.dumps(c) for c in dim.choices])
        elif _integral(key, dim, params):
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return overrides_of(values)


def overrides_of(trial_params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna params as params.yaml overrides (JSON-encoded choices decoded)."""
    return {key: json.loads(value) if isinstance(value, str) and value[:1] == "[" else value
            for key, value in trial_params.items()}


def check(space: dict[str, SweepDimension], params: Params) -> None:
    """Every searched key exists in params.yaml and every value in its range or choices is one it accepts."""
    from tasks.common.config import with_overrides

    if not space:
        raise ConfigError("sweep.space is empty: name the keys to search, e.g. train.lr: {low: 0.0005, high: 0.01, "
                          "log: true} (README: Sweeps)")
    for key, dim in space.items():
        if dim.log and dim.step:
            raise ConfigError(f"sweep.space.{key}: log and step do not go together (Optuna samples one or the other)")
        ends = list(dim.choices) or [dim.low, dim.high]
        for value in ends:
            value = int(value) if not dim.choices and _integral(key, dim, params) else value
            try:
                with_overrides(params, {key: value})
            except ConfigError as err:
                raise ConfigError(f"sweep.space.{key}: {err}") from err


def _integral(key: str, dim: SweepDimension, params: Params) -> bool:
    """Whether the key holds a whole number in params.yaml (epochs, batch size), so its range is one of integers."""
    node: Any = params.as_dict()
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, int) and not isinstance(node, bool) and float(dim.low).is_integer() \
        and float(dim.high).is_integer()
