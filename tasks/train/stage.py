"""Stage `train`: fit the configured model; resumable per epoch, DDP under torchrun, CUDA with autocast when present."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_json, write_with
from tasks.common.config import Params
from tasks.common.dataset import directory_md5, load_split
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
    import mlflow
    import torch

    from tasks.common import tracking
    from tasks.common.dataset import prepared_meta
    from tasks.nn.checkpoint import load_training_state, save_training_state
    from tasks.nn.device import device_tags, resolve_device, seed_everything, set_threads
    from tasks.nn.distributed import barrier, epoch_order, mean_over_ranks
    from tasks.nn.epoch import epoch_progress, evaluate_loss, train_epoch
    from tasks.nn.models import build_model
    from tasks.nn.optim import build_optimizer, build_schedule

    cfg, seed = params.train, params.base.seed
    device = resolve_device(cfg.device, world.local_rank)
    set_threads(cfg.threads, device)
    seed_everything(seed)
    (x_train, y_train), (x_val, y_val), streamed = _load_data(prepared_dir, device, cfg.preload_max_mb)
    data = prepared_meta(prepared_dir)
    input_shape, n_classes = tuple(x_train.shape[1:]), len(data.classes)  # every class, even one a split lacks
    model = build_model(cfg, input_shape, n_classes).to(device)
    if device.type == "cuda" and cfg.channels_last and x_train.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
        if not streamed:
            x_train, x_val = (t.to(memory_format=torch.channels_last) for t in (x_train, x_val))
    batch = max(cfg.batch_size // world.size, 1)  # the global batch stays cfg.batch_size, whatever N is
    optimizer = build_optimizer(cfg, model.parameters())
    scheduler = build_schedule(cfg, optimizer, math.ceil(len(y_train) / world.size / batch))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    augment = _augmenter(cfg, device) if x_train.ndim == 4 else None

    hashes = {split: directory_md5(prepared_dir / split) for split in ("train", "val", "test")}
    fingerprint = _fingerprint(params, hashes, world.size)
    state = load_training_state(out_dir / "last.pt", fingerprint)
    best = {"loss": float("inf"), "epoch": 0, "state": None, "accuracy": 0.0}
    history, start_epoch, run_id = [], 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        best, history, start_epoch, run_id = state["best"], state["history"], state["epoch"], state["run_id"]
        log.info("resuming from epoch %d of an interrupted run (%s)", start_epoch, out_dir / "last.pt")
    net = _wrap(model, world, device, cfg.compile)

    started = time.perf_counter()
    run_context = nullcontext(None)
    if world.is_main:
        experiment_id = tracking.configure(root, params.base.experiment)
        run_context = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                                       tags=None if run_id or hooks is None else hooks.tags)
    with run_context as run:
        if run is not None and run_id is None:
            run_id = run.info.run_id
            tracking.record_run(out_dir / "run.json", run_id, experiment_id)
            mlflow.log_params(_flatten(params.as_dict()))
            mlflow.set_tags({**tracking.lineage_tags(root, hashes, params.as_dict()), **device_tags(device, world),
                             **tracking.data_tags(data)})
            mlflow.log_dict(data.model_dump(exclude={"encoding"}), "data/description.json")
        progress = epoch_progress(cfg.epochs, disable=not world.is_main or hooks is not None,  # a sweep has its own
                                  initial=start_epoch)
        epochs_run = start_epoch
        for epoch in range(start_epoch, cfg.epochs):
            _reseed(seed, epoch, world.rank, augment)  # per-epoch seeds: a resumed run draws what the original would
            order = epoch_order(len(y_train), epoch, seed, world).to(device)
            tick = time.perf_counter()
            loss, acc = train_epoch(net, optimizer, scaler, x_train, y_train, order, batch, scheduler=scheduler,
                                    augment=augment, use_amp=use_amp, amp_dtype=amp_dtype, label_smoothing=cfg.label_smoothing)
            seconds = time.perf_counter() - tick
            val_loss, val_acc = evaluate_loss(model, x_val, y_val, cfg.batch_size)
            epochs_run = epoch + 1
            row = {"epoch": epochs_run, "train_loss": mean_over_ranks(loss, world, device),
                   "train_accuracy": mean_over_ranks(acc, world, device), "val_loss": val_loss, "val_accuracy": val_acc,
                   "lr": optimizer.param_groups[0]["lr"], "samples_per_s": len(y_train) / seconds}
            history.append(row)
            if val_loss < best["loss"]:
                best = {"loss": val_loss, "epoch": epochs_run, "state": copy.deepcopy(model.state_dict()), "accuracy": val_acc}
            if world.is_main:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epochs_run)
                save_training_state(out_dir / "last.pt", {
                    "fingerprint": fingerprint, "epoch": epochs_run, "run_id": run_id, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "best": best, "history": history})
            if hooks is not None and hooks.on_epoch is not None and world.is_main:
                hooks.on_epoch(epochs_run, row)
            progress.update()
            progress.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.4f}")
            if epochs_run - best["epoch"] >= cfg.patience:
                log.info("early stop at epoch %d: no val-loss gain for %d epochs", epochs_run, cfg.patience)
                break
        progress.close()
        seconds = time.perf_counter() - started
        if world.is_main:
            _finish(root, out_dir, model, best, history, params, input_shape, n_classes, run_id, epochs_run, seconds, device,
                    lineage=hooks is None)
    barrier(world)
    log.info("trained %s on %s: best epoch %d, val acc %.4f", cfg.model, device, best["epoch"], best["accuracy"])
    return TrainResult(run_id or "", str(device), best["epoch"], epochs_run, best["loss"], best["accuracy"], seconds, start_epoch)


def _finish(root, out_dir, model, best, history, params, input_shape, n_classes, run_id, epochs_run, seconds, device,
            lineage: bool) -> None:
    """Rank 0, after the last epoch: the best weights, the summary, the curves; then the resume state goes."""
    import mlflow

    from tasks.nn.checkpoint import save_checkpoint
    from tasks.nn.curves import plot_curves
    from tasks.nn.device import peak_memory_mb

    model.load_state_dict(best["state"])
    save_checkpoint(out_dir / "model.pt", model, params=params.as_dict(), input_shape=input_shape, n_classes=n_classes,
                    extra={"seed": params.base.seed, "epoch": best["epoch"], "run_id": run_id})
    summary = {"best_epoch": best["epoch"], "epochs_run": epochs_run, "val_loss": best["loss"],
               "val_accuracy": best["accuracy"], "train_seconds": seconds, "peak_memory_mb": peak_memory_mb(device)}
    mlflow.log_metrics({f"best_{k}": float(v) for k, v in summary.items()})
    write_json(out_dir / "metrics.json", summary)
    write_with(out_dir / "history.csv", lambda tmp: _write_history(tmp, history))
    write_with(out_dir / "curves.png", lambda tmp: plot_curves(tmp, history, best["epoch"]))
    mlflow.log_artifact(str(out_dir / "history.csv"))
    mlflow.log_artifact(str(out_dir / "curves.png"))
    for name in ("dvc.lock", "params.yaml") if lineage else ():  # the data version (under `dvc repro`) and the params
        if (Path(root) / name).is_file():                            # this run used: what `mlops reproduce` restores
            mlflow.log_artifact(str(Path(root) / name), artifact_path="lineage")
    (out_dir / "last.pt").unlink(missing_ok=True)


def _load_data(prepared_dir: Path, device, preload_max_mb: float):
    """Train and val as (x, y). Up to `preload_max_mb` of images, x is copied to the device once (no per-batch copies);
    above it, x stays a memory-mapped file read batch by batch, so memory stays flat however large the data grows.
    Labels always go to the device (8 bytes a row)."""
    import torch

    splits = [load_split(prepared_dir / s, mmap=True) for s in ("train", "val")]
    megabytes = sum(sp.x.nbytes for sp in splits) / 2**20
    streamed = megabytes > preload_max_mb
    if streamed:
        log.info("streaming %.0f MB of inputs from memory-mapped files (train.preload_max_mb: %g)", megabytes, preload_max_mb)
    loaded = [(sp.x if streamed else torch.from_numpy(np.array(sp.x)).to(device),
               torch.from_numpy(np.array(sp.y)).to(device)) for sp in splits]
    return loaded[0], loaded[1], streamed


def _augmenter(cfg, device):
    import torch

    from tasks.nn.augment import random_affine

    a = cfg.augment
    if not (a.rotation or a.scale or a.shift):
        return None
    generator = torch.Generator(device=device)

    def augment(images):
        return random_affine(images, generator, rotation=a.rotation, scale=a.scale, shift=a.shift)

    augment.generator = generator
    return augment


def _reseed(seed: int, epoch: int, rank: int, augment) -> None:
    import torch

    epoch_seed = seed * 1_000_003 + epoch * 1_009 + rank
    torch.manual_seed(epoch_seed)  # dropout
    if augment is not None:
        augment.generator.manual_seed(epoch_seed)


def _wrap(model, world, device, compile_model: bool):
    import torch

    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile_model else model


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
