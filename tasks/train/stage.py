"""Stage `train`: fit the configured model; resumable per epoch, DDP under torchrun, CUDA with autocast when present."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.common.atomic import write_json, write_with
from tasks.common.config import Params
from tasks.common.dataset import directory_md5
from tasks.common.layout import Layout

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
    resumed_at_epoch: int  # 0 for a fresh start
    family: str = "network"  # what model.pt holds: network | tree (train.model: auto ships the better on validation)


@dataclass(frozen=True)
class RunHooks:
    """What a caller other than the pipeline (a sweep's trial) changes about a training run."""

    tags: dict[str, str]  # extra tags on the new MLflow run: a sweep's parent run id, the trial's number
    on_epoch: Callable[[int, dict], None] | None = None  # after each epoch's row; raising stops the run (pruning)


def train(params: Params, root: Path, prepared_dir: Path, out_dir: Path, hooks: RunHooks | None = None) -> TrainResult:
    """Train, checkpoint every epoch to `out_dir/last.pt`, keep the best epoch in `out_dir/model.pt`.

    A run killed mid-way resumes from `last.pt` when started again with the same params and data. Under
    `torchrun --nproc_per_node=N` each process trains on its shard; rank 0 alone logs and writes files.
    """
    from tasks.nn import distributed
    from tasks.nn.device import resolve_device

    world = distributed.join(use_cuda=resolve_device(params.train.device).type == "cuda")
    try:
        return _train(params, root, prepared_dir, out_dir, world, hooks)
    finally:
        distributed.leave(world)


def _train(params: Params, root: Path, prepared_dir: Path, out_dir: Path, world, hooks: RunHooks | None) -> TrainResult:
    from tasks.common.dataset import prepared_meta
    from tasks.common.tables import text_of
    from tasks.nn.distributed import barrier
    from tasks.train import loop
    from tasks.train.contest import NETWORK, families

    data = prepared_meta(prepared_dir)
    trained = families(params.train.model, data.kind, data.kind == "table" and bool(text_of(data.columns)))
    fit = loop.build(params, prepared_dir, world, n_classes=len(data.classes)) if NETWORK in trained else None
    hashes = {split: directory_md5(prepared_dir / split) for split in ("train", "val", "test")}
    fingerprint = _fingerprint(params, hashes, world.size)
    progress = loop.resume(fit, out_dir / "last.pt", fingerprint) if fit else loop.Progress()
    started = time.perf_counter()
    family = NETWORK
    with _tracked(root, params, out_dir, world, fit, progress, hooks, hashes, data):
        if fit:
            _epochs(fit, progress, out_dir, fingerprint, hooks)
            if world.is_main:
                _finish(root, out_dir, fit, progress, time.perf_counter() - started, lineage=hooks is None)
        if trained != [NETWORK] and world.is_main:  # a challenger: the trees or TF-IDF
            from tasks.train.contest import contest

            family = contest(params, root, prepared_dir, out_dir, data, progress, lineage=hooks is None)
    barrier(world)
    best = progress.best
    log.info("trained %s (%s shipped) on %s: best epoch %d, val acc %.4f", params.train.model, family,
             fit.device if fit else "cpu", best["epoch"], best["accuracy"])
    return TrainResult(progress.run_id or "", str(fit.device) if fit else "cpu", best["epoch"], progress.epochs_run,
                       best["loss"], best["accuracy"], time.perf_counter() - started, progress.start_epoch, family)


@contextmanager
def _tracked(root: Path, params: Params, out_dir: Path, world, fit, progress, hooks: RunHooks | None, hashes: dict,
             data):
    """Rank 0's MLflow run for the block: the interrupted run's own when resuming, else a new one with the params,
    lineage, device and data tags (and a sweep's tags from `hooks`); `progress.run_id` is set."""
    if not world.is_main:
        yield
        return
    import mlflow
    import torch

    from tasks.common import tracking
    from tasks.nn.device import device_tags

    experiment_id = tracking.configure(root, params.base.experiment)
    resumed = progress.run_id
    started = mlflow.start_run(run_id=resumed, experiment_id=None if resumed else experiment_id,
                               tags=None if resumed or hooks is None else hooks.tags)
    with started as run, tracking.marked_open(root, run):
        if resumed is None:
            progress.run_id = run.info.run_id
            tracking.record_run(out_dir / "run.json", progress.run_id, experiment_id)
            mlflow.log_params(_flatten(params.recorded()))
            mlflow.set_tags({**tracking.lineage_tags(root, hashes, params.recorded()),
                             **device_tags(fit.device if fit else torch.device("cpu"), world),
                             **tracking.data_tags(data)})
            mlflow.log_dict(data.model_dump(exclude={"encoding"}), "data/description.json")
        yield


def _epochs(fit, progress, out_dir: Path, fingerprint: str, hooks: RunHooks | None) -> None:
    """From the first epoch not yet run to train.epochs or an early stop: each epoch logged and checkpointed by rank
    0, with a progress bar (a sweep's trial has its own) and the caller's hook."""
    from tasks.nn.epoch import epoch_progress
    from tasks.train import loop

    cfg, main = fit.params.train, fit.world.is_main
    bar = epoch_progress(cfg.epochs, disable=not main or hooks is not None, initial=progress.start_epoch)
    with bar as progress_bar:  # closed on an error too: the error's line starts a line of its own
        for epoch in range(progress.start_epoch, cfg.epochs):
            row = loop.run_epoch(fit, epoch)
            stop = loop.record(fit, progress, row)
            if main:
                import mlflow

                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
                loop.save(fit, progress, out_dir / "last.pt", fingerprint)
                if hooks is not None and hooks.on_epoch is not None:
                    hooks.on_epoch(row["epoch"], row)
            progress_bar.update()
            progress_bar.set_postfix(val_loss=f"{row['val_loss']:.4f}", val_acc=f"{row['val_accuracy']:.4f}")
            if stop:
                log.info("early stop at epoch %d: no val-loss gain for %d epochs", row["epoch"], cfg.patience)
                break


def _finish(root, out_dir: Path, fit, progress, seconds: float, lineage: bool) -> None:
    """Rank 0, after the last epoch: the best weights, the summary, the curves; then the resume state goes."""
    import mlflow

    from tasks.nn.checkpoint import save_checkpoint
    from tasks.nn.device import peak_memory_mb

    params, best, history = fit.params, progress.best, progress.history
    fit.model.load_state_dict(best["state"])
    save_checkpoint(out_dir / "model.pt", fit.model, params=params.recorded(), input_shape=fit.input_shape,
                    n_classes=fit.n_classes, extra={"seed": params.base.seed, "epoch": best["epoch"],
                                                    "run_id": progress.run_id}, text=fit.text)
    summary = {"best_epoch": best["epoch"], "epochs_run": progress.epochs_run, "val_loss": best["loss"],
               "val_accuracy": best["accuracy"], "train_seconds": seconds, "peak_memory_mb": peak_memory_mb(fit.device)}
    mlflow.log_metrics({f"best_{k}": float(v) for k, v in summary.items()})
    write_json(out_dir / "metrics.json", {**summary, "family": "network"})
    write_curves(root, out_dir, history, best["epoch"], lineage)
    (out_dir / "last.pt").unlink(missing_ok=True)


def write_curves(root: Path, out_dir: Path, history: list[dict], best_epoch: int, lineage: bool) -> None:
    """The shipped model's curves (history.csv, curves.png) written and logged to the active run, with the lineage
    files this run used (dvc.lock: the data version under `dvc repro`; params.yaml: what `mlops reproduce` restores)."""
    import mlflow

    from tasks.nn.curves import plot_curves

    write_with(out_dir / "history.csv", lambda tmp: _write_history(tmp, history))
    write_with(out_dir / "curves.png", lambda tmp: plot_curves(tmp, history, best_epoch))
    mlflow.log_artifact(str(out_dir / "history.csv"))
    mlflow.log_artifact(str(out_dir / "curves.png"))
    for name in ("dvc.lock", "params.yaml") if lineage else ():
        if (Path(root) / name).is_file():
            mlflow.log_artifact(str(Path(root) / name), artifact_path="lineage")


def _fingerprint(params: Params, hashes: dict, world_size: int) -> str:
    blob = json.dumps({"train": params.train.model_dump(mode="json"), "seed": params.base.seed, "data": hashes,
                       "world": world_size}, sort_keys=True)
    return hashlib.md5(blob.encode()).hexdigest()


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


def run(params: Params, layout: Layout) -> TrainResult:
    """The stage as dvc.yaml runs it (`python -m tasks.train`): params.yaml's values, the project's paths."""
    return train(params, layout.root, layout.prepared, layout.train)
