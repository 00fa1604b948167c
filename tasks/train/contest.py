"""Which model family ships: with `train.model: auto` on a table, the network (already trained) and a challenger
(gradient-boosted trees; on a table with text, TF-IDF + logistic regression) are scored on the same validation split
by the gate's metric (`evaluate.gate_metric`), and the better one becomes artifacts/train/model.pt; when neither
leads significantly (`evaluate.significance`), the lower validation log-loss decides. With `train.model: tree` or
`tfidf`, the challenger alone."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_json
from tasks.common.config import Params
from tasks.common.dataset import load_split

log = logging.getLogger(__name__)
NETWORK, TREE, TFIDF = "network", "tree", "tfidf"


def families(model: str, kind: str, has_text: bool) -> list[str]:
    """The model families `train.model` trains on this data, the network first: `auto` on a table trains the network
    and a challenger (trees; TF-IDF + logistic regression when the table has text) and ships the better on the
    validation split (contest.py); `tree` or `tfidf` the challenger alone; anything else a network."""
    from tasks.common.errors import ConfigError

    if model == TREE and not (kind == "table" and not has_text):
        raise ConfigError("train.model=tree needs a table without text (trees read numbers and categories; "
                          f"this data is {'a table with text' if has_text else kind}): use train.model: auto")
    if model == TFIDF and not has_text:
        raise ConfigError(f"train.model=tfidf needs a text column; this data has none ({kind}): use train.model: auto")
    if model in (TREE, TFIDF):
        return [model]
    if model == "auto" and kind == "table":
        return [NETWORK, TFIDF if has_text else TREE]
    return [NETWORK]


@dataclass(frozen=True)
class Verdict:
    family: str  # the family shipped
    scores: dict[str, float]  # each family's validation score by the gate's metric
    losses: dict[str, float]  # each family's validation log-loss
    reason: str


@dataclass(frozen=True)
class Challenger:
    """A family fitted beside the network: its validation probabilities, its rounds (history) and how it is saved."""

    family: str
    probabilities: np.ndarray  # on the validation split
    history: list[dict]  # rows as a network's epochs (train/val loss and accuracy)
    seconds: float
    save: Callable[[Path, dict], None]  # (model.pt, provenance) → the checkpoint
    metrics: dict  # logged to the run


def contest(params: Params, root: Path, prepared_dir: Path, out_dir: Path, data, progress, lineage: bool) -> str:
    """Fit the challenger (trees for a table, TF-IDF for text), score every family trained on the validation split,
    ship the best; its family."""
    import mlflow

    from tasks.nn.checkpoint import load_checkpoint
    from tasks.train.stage import write_curves
    train, val = load_split(prepared_dir / "train"), load_split(prepared_dir / "val")
    challenger = _challenger(params, data, (train.x, train.y), (val.x, val.y))
    probabilities = {challenger.family: challenger.probabilities}
    if progress.history:  # the network's best epoch, reloaded from the checkpoint it ships as
        probabilities = {NETWORK: _softmax(load_checkpoint(out_dir / "model.pt")[0], np.asarray(val.x)),
                         **probabilities}
    verdict = judge(probabilities, np.asarray(val.y), params.evaluate.gate_metric, params.evaluate.significance)
    shipped = {**_shipped(challenger.history), "seconds": challenger.seconds}
    if verdict.family == challenger.family:
        rounds = len(challenger.history)
        challenger.save(out_dir / "model.pt", {"seed": params.base.seed, "epoch": rounds, "run_id": progress.run_id})
        progress.best = {"loss": shipped["val_loss"], "epoch": rounds, "state": None,
                         "accuracy": shipped["val_accuracy"]}
        progress.history, progress.epochs_run = challenger.history, rounds
        # the curves are the shipped model's; the lineage files went with the network's, when one was trained
        write_curves(root, out_dir, challenger.history, rounds, lineage and NETWORK not in probabilities)
    _record(out_dir, verdict, params.evaluate.gate_metric, shipped, len(challenger.history))
    metric = params.evaluate.gate_metric
    mlflow.log_metrics({f"family_{name}_val_{metric}": score for name, score in verdict.scores.items()})
    mlflow.log_metrics({f"family_{name}_val_log_loss": loss for name, loss in verdict.losses.items()})
    mlflow.log_metrics(challenger.metrics)
    mlflow.set_tag("train.family", verdict.family)
    log.info("model family: %s ships (%s)", verdict.family, verdict.reason)
    return verdict.family


def _challenger(params: Params, data, train: tuple, val: tuple) -> Challenger:
    """The trees on a table without text, TF-IDF + logistic regression on one with text, fitted on `train`."""
    from tasks.nn.checkpoint import TreeModel, save_checkpoint, save_tree_checkpoint
    from tasks.shipped.text import text_layout
    from tasks.train.trees import fit_tree

    n_classes, shape = len(data.classes), tuple(np.asarray(train[0]).shape[1:])
    text = text_layout(data.encoding, data.features)
    recorded = params.recorded()
    if text:
        from tasks.train.tfidf import fit_tfidf

        fit = fit_tfidf(params, text, train, val, n_classes)
        recorded = {**recorded, "train": {**recorded["train"], "model": TFIDF}}  # what load_checkpoint rebuilds
        return Challenger(TFIDF, _softmax(fit.model, np.asarray(val[0])), fit.history, fit.seconds,
                          lambda path, extra: save_checkpoint(path, fit.model, params=recorded, input_shape=shape,
                                                              n_classes=n_classes, extra=extra, text=text),
                          {"tfidf_c": fit.c, "tfidf_fit_seconds": fit.seconds})
    tree = fit_tree(params.train, train, val, n_classes, params.base.seed)
    return Challenger(TREE, TreeModel(tree.onnx).predict_proba(np.asarray(val[0])), tree.history, tree.seconds,
                      lambda path, extra: save_tree_checkpoint(path, tree.onnx, params=recorded, input_shape=shape,
                                                               n_classes=n_classes, extra=extra),
                      {"tree_rounds": float(tree.rounds), "tree_fit_seconds": tree.seconds})


def judge(probabilities: dict[str, np.ndarray], y: np.ndarray, metric: str, significance: float) -> Verdict:
    """The family with the best validation score by `metric` (accuracy | balanced_accuracy), when it leads the
    runner-up significantly (one-sided paired z-test on the same examples at `significance`); within that noise
    (thousands of rows can still split two good models by a row or two), the lower validation log-loss, the finer
    measure of the same predictions, decides. One family: itself."""
    from scipy.stats import norm
    from sklearn.metrics import log_loss

    weights = _weights(y, metric)
    correct = {name: p.argmax(1) == y for name, p in probabilities.items()}
    scores = {name: float((weights * c).sum()) for name, c in correct.items()}
    labels = list(range(next(iter(probabilities.values())).shape[1]))
    losses = {name: float(log_loss(y, np.clip(p, 1e-7, 1), labels=labels)) for name, p in probabilities.items()}
    ranked = sorted(scores, key=lambda name: -scores[name])  # stable: the first family on an exact tie
    leader = ranked[0]
    if len(ranked) == 1:
        return Verdict(leader, scores, losses, f"validation {metric} {scores[leader]:.4f}")
    runner = ranked[1]
    d = weights * (correct[leader].astype(float) - correct[runner])
    spread = float(np.sqrt(len(d) * d.var(ddof=1))) if len(d) > 1 else 0.0
    z = (scores[leader] - scores[runner]) / spread if spread > 0 else 0.0
    critical = float(norm.ppf(1 - significance))
    versus = f"validation {metric}: {leader} {scores[leader]:.4f} vs {runner} {scores[runner]:.4f}"
    if z >= critical:
        return Verdict(leader, scores, losses, f"{versus}, {scores[leader] - scores[runner]:.4f} ahead "
                                               f"(paired z {z:.2f} ≥ {critical:.2f})")
    family = min((leader, runner), key=lambda name: losses[name])
    other = runner if family == leader else leader
    return Verdict(family, scores, losses, f"{versus}, within noise (paired z {z:.2f} < {critical:.2f}); "
                                           f"the lower validation log-loss decides: {family} {losses[family]:.4f} "
                                           f"vs {other} {losses[other]:.4f}")


def _weights(y: np.ndarray, metric: str) -> np.ndarray:
    """Each example's share of the score: 1/n for accuracy; for balanced accuracy 1/(classes × its class's rows)."""
    if metric != "balanced_accuracy":
        return np.full(len(y), 1.0 / len(y))
    classes, counts = np.unique(y, return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist()))
    return np.array([1.0 / (len(classes) * per_class[k]) for k in y.tolist()])


def _softmax(model, x: np.ndarray) -> np.ndarray:
    import torch

    from tasks.nn.epoch import predict_logits

    return torch.softmax(predict_logits(model, x, 512), 1).numpy()


def _shipped(history: list[dict]) -> dict:
    """The shipped ensemble's figures: its last round's (early stopping keeps every round it ran)."""
    return {"val_loss": history[-1]["val_loss"], "val_accuracy": history[-1]["val_accuracy"]}


def _record(out_dir: Path, verdict: Verdict, metric: str, rounds: dict, n_rounds: int) -> None:
    """metrics.json names the family shipped, why, and every family's validation score and log-loss (the network's own
    summary, when one was trained, stays; a shipped tree's replaces its figures)."""
    import mlflow

    path = out_dir / "metrics.json"
    summary = json.loads(path.read_text()) if path.is_file() and len(verdict.scores) > 1 else {}
    if verdict.family != "network":
        shipped = {"best_epoch": n_rounds, "epochs_run": n_rounds, "val_loss": rounds["val_loss"],
                   "val_accuracy": rounds["val_accuracy"], "train_seconds": rounds["seconds"]}
        summary.update(shipped)
        # the run's best_* figures are the shipped model's, as for a network (what `mlops reproduce` compares)
        mlflow.log_metrics({f"best_{k}": float(v) for k, v in shipped.items()})
    families = {name: {f"val_{metric}": score, "val_log_loss": verdict.losses[name]}
                for name, score in verdict.scores.items()}
    write_json(path, {**summary, "family": verdict.family, "family_metric": metric, "family_reason": verdict.reason,
                      "families": families})
