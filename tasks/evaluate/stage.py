"""Stage `evaluate`: test-split metrics and plots, the model logged and registered, the gate against the champion.

The gate's decision (artifacts/evaluate/gate.json) is not yet a promotion: the `promote` stage moves
`champion` only after the candidate's Bento has answered correctly (tasks/promote/)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_json, write_with
from tasks.common.config import Params
from tasks.common.dataset import directory_md5, file_md5, load_split
from tasks.common.layout import Layout
from tasks.common.outputs import GateResult
from tasks.evaluate.gate import Scores, decide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    accuracy: float
    f1_macro: float
    model_version: str
    passed: bool  # the gate let it through; the promote stage decides whether it becomes champion
    reason: str


def evaluate(params: Params, root: Path, prepared_dir: Path, train_dir: Path, out_dir: Path) -> EvaluateResult:
    """Score the trained model on the test split, log everything to the run, register it and decide on champion."""
    import mlflow

    from tasks.common import registry, tracking
    from tasks.common.dataset import prepared_meta
    from tasks.evaluate.baselines import fit_baselines, leaderboard
    from tasks.evaluate.champion import champion_scores
    from tasks.nn.checkpoint import load_checkpoint

    model, _ = load_checkpoint(train_dir / "model.pt")
    test = load_split(prepared_dir / "test")
    probabilities = predict_proba(model, np.asarray(test.x))
    predicted = probabilities.argmax(1)
    data = prepared_meta(prepared_dir)
    classes = data.classes
    metrics, per_class = classification_metrics(test.y, predicted, classes)
    ece, bins = calibration(test.y, probabilities)
    metrics["expected_calibration_error"] = ece
    pairs = confused_pairs(test.y, predicted, classes)
    train = load_split(prepared_dir / "train", mmap=True)
    baselines = fit_baselines(train.x, train.y, test.x, test.y, data.kind, params.base.seed,
                              texts=baseline_texts(prepared_dir, data))
    board = leaderboard({"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}, baselines,
                        getattr(model, "family", "network"))
    metric = params.evaluate.gate_metric  # the best baseline by what the gate compares
    best = max(baselines, key=lambda b: Scores(b.correct, {}, test.y).score(metric))
    logged = _write_files(out_dir, test, probabilities, data.kind, classes, metrics, per_class, pairs, board, bins, ece)
    with tracking.resumed_run(root, params.base.experiment, train_dir / "run.json") as run:
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        mlflow.log_metrics({f"test_recall_class_{metric_safe(k)}": v["recall"] for k, v in per_class.items()})
        mlflow.log_metrics({f"baseline_{b.name}_accuracy": b.accuracy for b in baselines})
        mlflow.log_table({k: [row.get(k) for row in board] for k in board[0]}, artifact_file="evaluation/leaderboard.json")
        for name in logged:
            mlflow.log_artifact(str(out_dir / name), artifact_path="evaluation")
        challenger = Scores(predicted == test.y, _recalls(per_class), np.asarray(test.y))
        pinned = {"test_split.md5": directory_md5(prepared_dir / "test"),  # what both models were scored on
                  "test_split.dvc_md5": tracking.dvc_hashes(root).get("dvc.data/prepared", "not tracked by DVC")}
        name = params.evaluate.registered_model
        with registry.promotion_lock():  # register and decide against one champion, not one moving meanwhile
            version = registry.log_and_register(model, test.x[:4], probabilities[:4], name, run,
                                                train_dir / "model.pt", file_md5(train_dir / "model.pt"))
            champion = champion_scores(name, lambda predict: _scores(predict, test, classes))
            decision = decide(params.evaluate, version, challenger, champion, (best.name, best.correct))
            if decision.previous_champion != version:  # the champion itself, re-evaluated, stays champion only
                mlflow.MlflowClient().set_registered_model_alias(name, registry.CHALLENGER, version)
        _record_decision(name, version, decision, pinned, tracking.data_tags(data))
    GateResult(**decision.model_dump(), **pinned).write(out_dir / "gate.json")
    log.info("test accuracy %.4f; model version %s: %s", metrics["accuracy"], version, decision.reason)
    return EvaluateResult(metrics["accuracy"], metrics["f1_macro"], version, decision.passed, decision.reason)


def baseline_texts(prepared_dir: Path, data):
    """A text table's texts for the TF-IDF baseline (its text columns joined), or None."""
    import pandas as pd

    from tasks.common.tables import text_of
    from tasks.evaluate.baselines import Texts
    from tasks.shipped.text import text_layout

    columns = text_of(data.columns) if data.kind == "table" else []
    if not columns:
        return None
    joined = {s: pd.read_parquet(prepared_dir / s / "rows.parquet", columns=columns).fillna("").astype(str)
              .agg("\n".join, axis=1).tolist() for s in ("train", "test")}
    return Texts(joined["train"], joined["test"], text_layout(data.encoding, data.features)["dense"])


def _write_files(out_dir: Path, test, probabilities: np.ndarray, kind: str, classes: list, metrics: dict,
                 per_class: dict, pairs: list, board: list[dict], bins: list[dict], ece: float) -> list[str]:
    """The evaluation's files in `out_dir` (metrics, per class, confused pairs, leaderboard, predictions,
    calibration, plots); the names of those logged to MLflow under `evaluation/`."""
    from tasks.evaluate.plots import plot_confusion, plot_misclassified, plot_reliability

    predicted = probabilities.argmax(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "per_class.json", per_class)
    write_json(out_dir / "confused_pairs.json", {"pairs": pairs})
    write_json(out_dir / "leaderboard.json", {row["model"]: {k: v for k, v in row.items() if k != "model"} for row in board})
    names = np.asarray(classes, dtype=object)
    write_with(out_dir / "predictions.csv", lambda tmp: _write_csv(tmp, {"actual": names[test.y], "predicted": names[predicted]}))
    write_with(out_dir / "calibration.csv", lambda tmp: _write_csv(tmp, {k: [b[k] for b in bins] for k in bins[0]}))
    images = np.asarray(test.x) if kind == "images" else None  # tables: no pictures
    plots = {"confusion_matrix.png": lambda tmp: plot_confusion(tmp, test.y, predicted, classes),
             "reliability.png": lambda tmp: plot_reliability(tmp, bins, ece),
             "misclassified.png": lambda tmp: plot_misclassified(tmp, images, test.y, probabilities, classes)}
    for name, draw in plots.items():
        write_with(out_dir / name, draw)
    return ["per_class.json", "confused_pairs.json", "predictions.csv", "calibration.csv", *plots]


def _record_decision(name: str, version: str, decision, pinned: dict, data_tags: dict) -> None:
    """The gate's decision as tags and metrics of the active run, and as tags of the model version, with the test
    split both models were scored on and the data's vocabulary (output i is data.classes[i])."""
    import mlflow

    gate_tags = {"gate.passed": str(decision.passed).lower(), "gate.reason": decision.reason,
                 "gate.challenger_version": version, "gate.champion_version": decision.previous_champion or "none",
                 "gate.test": decision.test or "none"}
    # The run trained exactly this version (one version per run and weights), so its tags are this version's.
    mlflow.set_tags({**pinned, **gate_tags})
    for key, value in {**pinned, **gate_tags, **data_tags}.items():
        mlflow.MlflowClient().set_model_version_tag(name, version, key, value)
    numbers = {"champion_test_accuracy": decision.champion_accuracy, "improvement": decision.improvement,
               "gate_statistic": decision.statistic, "gate_p_value": decision.p_value,
               "gate_lower_bound": decision.lower_bound}
    mlflow.log_metrics({k: v for k, v in numbers.items() if v is not None})


def calibration(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """Expected calibration error over equal-width confidence bins, and the non-empty bins (for the reliability plot)."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)  # (low, high] bins
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        if not inside.any():
            continue
        accuracy, mean_conf = float(correct[inside].mean()), float(confidence[inside].mean())
        ece += inside.mean() * abs(accuracy - mean_conf)
        bins.append({"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "confidence": mean_conf,
                     "accuracy": accuracy, "count": int(inside.sum())})
    return float(ece), bins


def confused_pairs(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], top: int = 5) -> list[dict]:
    """The most frequent (actual, predicted) mistakes, by class name, most frequent first."""
    from collections import Counter

    counts = Counter((int(a), int(p)) for a, p in zip(y_true, y_pred) if a != p)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"actual": classes[a], "predicted": classes[p], "count": n} for (a, p), n in ranked]


def metric_safe(name: str) -> str:
    """A class name as part of an MLflow metric name (letters, digits, _ - . space / only)."""
    import re

    return re.sub(r"[^\w\-. /]", "_", name)


def _recalls(per_class: dict) -> dict[str, float]:
    return {str(k): float(v["recall"]) for k, v in per_class.items()}


def _scores(predict, test, classes: list[str]):
    """A registered model's results on this test split, example by example (for the paired comparison)."""
    predicted = predict(np.ascontiguousarray(test.x)).argmax(1)
    _, per_class = classification_metrics(test.y, predicted, classes)
    return Scores(predicted == test.y, _recalls(per_class), np.asarray(test.y))


def predict_proba(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities of a torch model, computed on the CPU in batches, or of a tree ensemble (TreeModel)."""
    import torch

    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    model.eval()
    with torch.inference_mode():
        chunks = [torch.softmax(model(torch.from_numpy(x[i : i + batch_size])), 1) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).numpy()


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> tuple[dict, dict]:
    """Accuracy, balanced accuracy (the mean of the classes' recalls: what an imbalanced table is judged on) and macro
    precision/recall/F1, plus the per-class report keyed by class name."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        classification_report,
        precision_recall_fscore_support,
    )

    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }
    report = classification_report(y_true, y_pred, labels=list(range(len(classes))), target_names=classes,
                                   output_dict=True, zero_division=0)
    per_class = {k: v for k, v in report.items() if k not in ("accuracy", "macro avg", "weighted avg")}
    return metrics, per_class


def _write_csv(path: Path, columns: dict) -> None:
    import csv

    names = list(columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(zip(*(np.asarray(columns[n]).tolist() for n in names)))


def run(params: Params, layout: Layout) -> EvaluateResult:
    """The stage as dvc.yaml runs it (`python -m tasks.evaluate`): params.yaml's values, the project's paths."""
    return evaluate(params, layout.root, layout.prepared, layout.train, layout.evaluate)
