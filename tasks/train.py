"""Stage `train`: fit the configured model with early stopping on validation loss; CUDA with autocast when present."""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.atomic import write_json, write_with
from tasks.config import Params
from tasks.dataset import directory_md5, load_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    device: str
    best_epoch: int
    epochs_run: int
    val_loss: float
    val_accuracy: float
    seconds: float


def train(params: Params, root: Path, prepared_dir: Path, out_dir: Path) -> TrainResult:
    """Train, checkpoint the best epoch to `out_dir/model.pt`, and open the pipeline's MLflow run."""
    import mlflow
    import torch

    from tasks import tracking
    from tasks.checkpoint import save_checkpoint
    from tasks.models import build_model

    cfg = params.train
    seed_everything(params.base.seed)
    device = resolve_device(cfg.device)
    train_split, val_split = load_split(prepared_dir / "train"), load_split(prepared_dir / "val")
    # The whole dataset fits on the device: no per-batch host-to-device copies.
    x_train, y_train = (torch.from_numpy(np.asarray(a)).to(device) for a in (train_split.x, train_split.y))
    x_val, y_val = (torch.from_numpy(np.asarray(a)).to(device) for a in (val_split.x, val_split.y))
    input_shape, n_classes = tuple(x_train.shape[1:]), int(max(y_train.max(), y_val.max()).item()) + 1
    model = build_model(cfg, input_shape, n_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    generator = torch.Generator(device="cpu").manual_seed(params.base.seed)

    experiment_id = tracking.configure(root, params.base.experiment)
    hashes = {split: directory_md5(prepared_dir / split) for split in ("train", "val", "test")}
    started = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id) as run:
        tracking.record_run(out_dir / "run.json", run.info.run_id, experiment_id)
        mlflow.log_params(_flatten(params.as_dict()))
        mlflow.set_tags({**tracking.lineage_tags(root, hashes, params.as_dict()), "device": str(device)})
        best = {"loss": float("inf"), "epoch": 0, "state": None, "accuracy": 0.0}
        history, epochs_run = [], 0
        progress = _progress(cfg.epochs)
        for epoch in progress:
            epochs_run = epoch + 1
            tick = time.perf_counter()
            train_loss = train_epoch(model, optimizer, scaler, x_train, y_train, cfg.batch_size, generator, use_amp, amp_dtype)
            val_loss, val_acc = evaluate_loss(model, x_val, y_val, cfg.batch_size)
            row = {
                "epoch": epochs_run,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": len(y_train) / (time.perf_counter() - tick),
            }
            scheduler.step()
            history.append(row)
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epochs_run)
            progress.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.4f}")
            if val_loss < best["loss"]:
                best = {"loss": val_loss, "epoch": epochs_run, "state": copy.deepcopy(model.state_dict()), "accuracy": val_acc}
            elif epochs_run - best["epoch"] >= cfg.patience:
                log.info("early stop at epoch %d: no val-loss gain for %d epochs", epochs_run, cfg.patience)
                break
        progress.close()
        model.load_state_dict(best["state"])
        save_checkpoint(
            out_dir / "model.pt", model, params=params.as_dict(), input_shape=input_shape,
            n_classes=n_classes, extra={"seed": params.base.seed, "epoch": best["epoch"], "run_id": run.info.run_id},
        )
        seconds = time.perf_counter() - started
        summary = {"best_epoch": best["epoch"], "epochs_run": epochs_run, "val_loss": best["loss"],
                   "val_accuracy": best["accuracy"], "train_seconds": seconds}
        mlflow.log_metrics({f"best_{k}": float(v) for k, v in summary.items()})
        write_json(out_dir / "metrics.json", summary)
        write_with(out_dir / "history.csv", lambda tmp: _write_history(tmp, history))
        mlflow.log_artifact(str(out_dir / "history.csv"))
    log.info("trained %s on %s: best epoch %d, val acc %.4f", cfg.model, device, best["epoch"], best["accuracy"])
    return TrainResult(run.info.run_id, str(device), best["epoch"], epochs_run, best["loss"], best["accuracy"], seconds)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(choice: str):
    """`auto` picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    import torch

    from tasks.errors import ConfigError

    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def train_epoch(model, optimizer, scaler, x, y, batch_size, generator, use_amp=False, amp_dtype=None) -> float:
    """One pass over (x, y) in seeded random order; returns the mean training loss."""
    import torch
    import torch.nn.functional as F

    model.train()
    order = torch.randperm(len(y), generator=generator).to(x.device)
    total = 0.0
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype, enabled=use_amp):
            loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * len(idx)
    return float(total / len(y))


def evaluate_loss(model, x, y, batch_size) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(y), batch_size)])
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _progress(epochs: int):
    from tqdm.auto import tqdm

    return tqdm(range(epochs), desc="train", unit="epoch", leave=False)


def _write_history(path: Path, history: list[dict]) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}.") if isinstance(value, dict) else {name: str(value)})
    return flat
