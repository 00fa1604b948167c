"""The training-curves plot: loss and accuracy per epoch, train against validation, the kept epoch marked."""

from __future__ import annotations

from pathlib import Path


def plot_curves(path: Path, history: list[dict], best_epoch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], style, label=split)
        ax.axvline(best_epoch, color="grey", linewidth=0.8, label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    loss_ax.set_yscale("log")
    acc_ax.set_title("train accuracy is on augmented images", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
