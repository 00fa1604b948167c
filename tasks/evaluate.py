"""Stage `evaluate`: test-split metrics and plots, the model logged and registered, champion decided."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.atomic import write_json, write_with
from tasks.config import Params
from tasks.dataset import load_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    accuracy: float
    f1_macro: float
    model_version: str
    promoted: bool
    reason: str


def evaluate(params: Params, root: Path, prepared_dir: Path, train_dir: Path, out_dir: Path) -> EvaluateResult:
    """Score the trained model on the test split, log everything to the run, register and maybe promote it."""
    import mlflow

    from tasks import registry, tracking
    from tasks.checkpoint import load_checkpoint

    model, _ = load_checkpoint(train_dir / "model.pt")
    test = load_split(prepared_dir / "test")
    probabilities = predict_proba(model, np.asarray(test.x))
    predicted = probabilities.argmax(1)
    metrics, per_class = classification_metrics(test.y, predicted)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "per_class.json", per_class)
    write_with(out_dir / "predictions.csv", lambda tmp: _write_predictions(tmp, test.y, predicted))
    write_with(out_dir / "confusion_matrix.png", lambda tmp: _plot_confusion(tmp, test.y, predicted))

    with tracking.resumed_run(root, params.base.experiment, train_dir / "run.json") as run:
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        for name in ("per_class.json", "confusion_matrix.png", "predictions.csv"):
            mlflow.log_artifact(str(out_dir / name), artifact_path="evaluation")
        version = registry.log_and_register(model, test.x[:4], probabilities[:4], params.evaluate.registered_model, run)
        decision = registry.decide_promotion(params.evaluate, version, metrics["accuracy"])
        mlflow.set_tags({"promotion.promoted": str(decision.promoted).lower(), "promotion.reason": decision.reason})
    write_json(out_dir / "promotion.json", asdict(decision))
    log.info("test accuracy %.4f; model version %s: %s", metrics["accuracy"], version, decision.reason)
    return EvaluateResult(metrics["accuracy"], metrics["f1_macro"], version, decision.promoted, decision.reason)


def predict_proba(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities of a torch model, computed on the CPU in batches."""
    import torch

    model.eval()
    with torch.inference_mode():
        chunks = [torch.softmax(model(torch.from_numpy(x[i : i + batch_size])), 1) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).numpy()


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[dict, dict]:
    """Accuracy and macro precision/recall/F1, plus the per-class report."""
    from sklearn.metrics import accuracy_score, classification_report, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    per_class = {k: v for k, v in report.items() if k not in ("accuracy", "macro avg", "weighted avg")}
    return metrics, per_class


def _write_predictions(path: Path, y_true: np.ndarray, y_pred: np.ndarray) -> None:
    lines = ["actual,predicted", *(f"{a},{p}" for a, p in zip(y_true.tolist(), y_pred.tolist()))]
    path.write_text("\n".join(lines) + "\n")


def _plot_confusion(path: Path, y_true: np.ndarray, y_pred: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, ax=ax, colorbar=False)
    ax.set_title("Test-split confusion matrix")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
