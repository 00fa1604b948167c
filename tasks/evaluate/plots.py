"""The evaluation plots: confusion matrix, reliability diagram, a grid of misclassified test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: Path, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> None:
    """Counts of (actual, predicted) class pairs, every class named, the diagonal right."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    side = min(max(6, 0.45 * len(classes)), 30)
    fig, ax = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(range(len(classes))), display_labels=classes,
                                            ax=ax, colorbar=False, xticks_rotation="vertical" if len(classes) > 6 else "horizontal")
    ax.set_title("Test-split confusion matrix")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_reliability(path: Path, bins: list[dict], ece: float) -> None:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), and how many predictions fall in each."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lows = [b["bin_low"] for b in bins]
    widths = [b["bin_high"] - b["bin_low"] for b in bins]
    top.bar(lows, [b["accuracy"] for b in bins], width=widths, align="edge", edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="tab:red", label="mean confidence")
    top.set(ylabel="accuracy", ylim=(0, 1.02), title=f"Reliability (expected calibration error {ece:.4f})")
    top.legend(loc="upper left")
    bottom.bar(lows, [b["count"] for b in bins], width=widths, align="edge", edgecolor="black")
    bottom.set(xlabel="confidence (top-class probability)", ylabel="predictions", xlim=(0, 1), yscale="log")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_misclassified(path: Path, x: np.ndarray | None, y_true: np.ndarray, probabilities: np.ndarray,
                       classes: list[str], limit: int = 25) -> None:
    """Up to `limit` misclassified images, most confident mistakes first, titled `true → predicted (p)`.

    For a table (`x` None) the same mistakes are listed by test-row number instead.
    """
    plt = _pyplot()
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != y_true)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:limit]
    if x is None:
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.3 * max(len(wrong), 1)))
        ax.axis("off")
        lines = [f"test row {i}: {classes[y_true[i]]} → {classes[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})"
                 for i in wrong]
        ax.text(0, 1, "\n".join(lines) or "no misclassified test rows", va="top", family="monospace")
        ax.set_title("Most confident mistakes (predictions.csv has every row)")
        fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return
    columns = 5
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if len(wrong) == 0:
        axes[0, 0].text(0, 0.5, "no misclassified test images", fontsize=12)
    for ax, i in zip(axes.ravel(), wrong):
        image = np.asarray(x[i])
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray_r")
        else:  # colour, N×C×H×W in [0, 1]
            ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
        ax.set_title(f"{classes[y_true[i]]} → {classes[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})", fontsize=10)
    fig.suptitle(f"Misclassified test images ({int((predicted != y_true).sum())} in all): true → predicted (probability)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
