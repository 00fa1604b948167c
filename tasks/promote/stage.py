"""Stage `promote`: move `champion` to the version the gate let through, once its Bento has proved it serves.

Three things must hold, checked in this order: the gate passed (artifacts/evaluate/gate.json); the candidate
Bento, started on loopback, answers test inputs exactly as the in-process model does (tasks/promote/readiness.py);
and the champion is still the one the gate compared against. Each move is appended to the champion's
history in MLflow (tasks/common/registry.py). A Bento that fails the check stops the stage with the reason; the
champion is untouched.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.common.config import Params
from tasks.common.errors import PromotionError
from tasks.common.layout import Layout
from tasks.common.outputs import BentoBuild, CompressChoice, GateResult, Promotion

log = logging.getLogger(__name__)
READINESS_BATCH = 64  # inputs per request in the serving check


@dataclass(frozen=True)
class PromoteResult:
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    readiness: dict | None = None


def promote(params: Params, root: Path, prepared_dir: Path, evaluate_dir: Path, compress_dir: Path,
            package_dir: Path, train_dir: Path, out_dir: Path) -> PromoteResult:
    import mlflow

    from tasks.common import registry, tracking

    gate = GateResult.read(evaluate_dir / "gate.json")
    bento = BentoBuild.read(package_dir / "bento.json").bento_tag
    version, previous, name = gate.version, gate.previous_champion, params.evaluate.registered_model
    with tracking.resumed_run(root, params.base.experiment, train_dir / "run.json") as run:
        if not gate.passed:
            result = PromoteResult(version, False, f"not promoted: {gate.reason}", previous)
        else:
            ready = _readiness(params, root, prepared_dir, compress_dir, bento)
            mlflow.log_metrics({"readiness_label_agreement": ready.label_agreement, "readiness_seconds": ready.seconds,
                                "readiness_max_probability_diff": ready.max_probability_diff})
            mlflow.set_tags({"readiness.ok": str(ready.ok).lower(), "readiness.reason": ready.reason[:4900]})
            if not ready.ok:
                raise PromotionError(f"v{version}'s Bento {bento} failed the serving check, champion "
                                     f"v{previous or '-'} untouched: {ready.reason}")
            with registry.promotion_lock():
                result = _move(name, version, previous, gate.reason, bento, ready, run.info.run_id)
        mlflow.set_tags({"promotion.promoted": str(result.promoted).lower(), "promotion.reason": result.reason[:4900],
                         "promotion.previous_champion": result.previous_champion or "none"})
    Promotion(**asdict(result), bento_tag=bento).write(out_dir / "promotion.json")
    log.info("promote: %s", result.reason)
    return result


def _move(name: str, version: str, previous: str | None, gate_reason: str, bento: str, ready, run_id: str) -> PromoteResult:
    """The alias move itself, under the promotion lock: only from the champion the gate compared against."""
    from tasks.common import registry

    current, checked = registry.champion_version(name), asdict(ready)
    if current == version:  # a re-run (a rebuilt Bento, say) of the version already champion: nothing to move
        return PromoteResult(version, True, f"v{version} is already champion; Bento {bento} serves it: {ready.reason}",
                             previous, checked)
    undone = [m for m in registry.history(name) if m.action == "rollback" and m.from_version == version]
    if undone:
        return PromoteResult(version, False, f"not promoted: v{version} was rolled back at {undone[-1].time} "
                             f"({undone[-1].reason}); train a new version instead", current, checked)
    if current != previous:  # another run promoted since the gate compared against `previous`
        return PromoteResult(version, False, f"not promoted: the champion moved from v{previous or '-'} to v{current} "
                             f"after this run's gate compared against v{previous or '-'}; run evaluate again",
                             current, checked)
    reason = f"{gate_reason}; Bento {bento} serves it: {ready.reason}"
    registry.move_champion(name, version, "promote", reason, source_run=run_id)
    return PromoteResult(version, True, f"promoted to champion: {reason}", previous, checked)


def _readiness(params: Params, root: Path, prepared_dir: Path, compress_dir: Path, bento: str):
    """Start the candidate Bento and compare its answers on test inputs with the shipped ONNX model's."""
    from tasks.common.dataset import load_split, served_inputs
    from tasks.nn.latency import onnx_predictor
    from tasks.promote.readiness import check_bento
    import numpy as np

    cfg = params.promote
    choice = CompressChoice.read(compress_dir / "choice.json")
    test = load_split(prepared_dir / "test", mmap=True)
    inputs = served_inputs(test.x[: cfg.readiness_samples], choice.pixel_max)
    predict = onnx_predictor(compress_dir / "model.onnx")
    # in the chunks the check sends: a dynamically quantized model scales its activations per batch
    expected = np.concatenate([predict(inputs[i : i + READINESS_BATCH]) for i in range(0, len(inputs), READINESS_BATCH)])
    expected = expected.astype("float64")
    if choice.kind == "table":  # the raw rows, through the service's own encoding (/predict_rows)
        inputs = raw_rows(prepared_dir / "test" / "rows.parquet", cfg.readiness_samples)
    return check_bento(bento, inputs, expected, choice.classes, cfg.max_probability_diff,
                       cfg.readiness_timeout_seconds, root / ".serving", batch=READINESS_BATCH)


def raw_rows(path: Path, limit: int) -> list[dict]:
    """A split's first `limit` original rows as a client sends them: features only, missing values as null."""
    import json

    import pandas as pd

    from tasks.common.tables import LABEL

    frame = pd.read_parquet(path).drop(columns=[LABEL]).head(limit)
    return json.loads(frame.to_json(orient="records"))  # NaN → null, numpy scalars → JSON numbers


def run(params: Params, layout: Layout) -> PromoteResult:
    """The stage as dvc.yaml runs it (`python -m tasks.promote`): params.yaml's values, the project's paths."""
    return promote(params, layout.root, layout.prepared, layout.evaluate, layout.compress, layout.package,
                   layout.train, layout.promote)
