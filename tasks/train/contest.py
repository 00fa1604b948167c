"""Which model family ships: with `train.model: auto` on a table, the network (already trained) and gradient-boosted
trees are scored on the same validation split by the gate's metric (`evaluate.gate_metric`), and the better one
becomes artifacts/train/model.pt; a tie keeps the network. With `train.model: tree`, the trees alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_json
from tasks.common.config import Params
from tasks.common.dataset import load_split

log = logging.getLogger(__name__)


def contest(params: Params, root: Path, prepared_dir: Path, out_dir: Path, data, progress, lineage: bool) -> str:
    """Fit the trees, score every family trained on the validation split, ship the best; its family."""
    import mlflow

    from tasks.nn.checkpoint import TreeModel, load_checkpoint, save_tree_checkpoint
    from tasks.nn.latency import predicted_classes, torch_predictor
    from tasks.train.stage import write_curves
    from tasks.train.trees import NETWORK, TREE, fit_tree

    train, val = load_split(prepared_dir / "train"), load_split(prepared_dir / "val")
    tree = fit_tree(params.train, (train.x, train.y), (val.x, val.y), len(data.classes), params.base.seed)
    metric = params.evaluate.gate_metric
    predictors = {TREE: TreeModel(tree.onnx).predict_proba}
    if progress.history:  # the network's best epoch, reloaded from the checkpoint it ships as
        predictors = {NETWORK: torch_predictor(load_checkpoint(out_dir / "model.pt")[0]), **predictors}
    scores = {name: val_score(predicted_classes(predict, np.asarray(val.x)), np.asarray(val.y), metric)
              for name, predict in predictors.items()}
    family = max(scores, key=lambda name: scores[name])  # the first (the network) on a tie
    rounds = {**_shipped(tree.history), "seconds": tree.seconds}
    if family == TREE:
        save_tree_checkpoint(out_dir / "model.pt", tree.onnx, params=params.recorded(), input_shape=train.x.shape[1:],
                             n_classes=len(data.classes), extra={"seed": params.base.seed, "epoch": tree.rounds,
                                                                 "run_id": progress.run_id})
        progress.best = {"loss": rounds["val_loss"], "epoch": tree.rounds, "state": None,
                         "accuracy": rounds["val_accuracy"]}
        progress.history, progress.epochs_run = tree.history, len(tree.history)
        # the curves are the shipped model's; the lineage files went with the network's, when one was trained
        write_curves(root, out_dir, tree.history, tree.rounds, lineage and NETWORK not in predictors)
    figures = _record(out_dir, family, scores, metric, rounds, tree.rounds)
    mlflow.log_metrics({f"family_{name}_val_{metric}": score for name, score in scores.items()})
    mlflow.log_metrics({"tree_rounds": float(tree.rounds), "tree_fit_seconds": tree.seconds})
    mlflow.set_tag("train.family", family)
    log.info("model family: %s ships (%s)", family, figures["family_reason"])
    return family


def val_score(predicted: np.ndarray, y: np.ndarray, metric: str) -> float:
    """`metric` (accuracy | balanced_accuracy) of predicted classes against the labels."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, predicted) if metric == "balanced_accuracy" else (predicted == y).mean())


def _shipped(history: list[dict]) -> dict:
    """The shipped ensemble's figures: its last round's (early stopping keeps every round it ran)."""
    return {"val_loss": history[-1]["val_loss"], "val_accuracy": history[-1]["val_accuracy"]}


def _record(out_dir: Path, family: str, scores: dict, metric: str, rounds: dict, n_rounds: int) -> dict:
    """metrics.json names the family shipped, why, and every family's validation score (the network's own summary,
    when one was trained, stays; a shipped tree's replaces its figures)."""
    path = out_dir / "metrics.json"
    summary = json.loads(path.read_text()) if path.is_file() and len(scores) > 1 else {}
    if family == "tree":
        summary.update({"best_epoch": n_rounds, "epochs_run": n_rounds, "val_loss": rounds["val_loss"],
                        "val_accuracy": rounds["val_accuracy"], "train_seconds": rounds["seconds"]})
    others = {name: score for name, score in scores.items() if name != family}
    reason = (f"validation {metric} {scores[family]:.4f}" + "".join(
        f"; {name} {score:.4f}, {scores[family] - score:.4f} behind" for name, score in others.items()))
    figures = {"family": family, "family_metric": metric, "family_reason": reason,
               "families": {name: {f"val_{metric}": score} for name, score in scores.items()}}
    write_json(path, {**summary, **figures})
    return figures
