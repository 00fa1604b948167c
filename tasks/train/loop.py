"""The training loop of the `train` stage: what one run holds (model, optimiser, data on the device), resuming it from
its last checkpoint, and its epochs. Tracking, files and the stage's shell are in stage.py."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.config import Params
from tasks.common.dataset import load_split

log = logging.getLogger(__name__)


@dataclass
class Fit:
    """Everything one training run holds: the model (and the wrapper that trains it: DDP, compiled), the optimiser,
    its schedule and gradient scaler, and the data, on the device when it fits."""

    params: Params
    world: Any
    device: Any
    model: Any
    net: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    augment: Callable | None
    use_amp: bool
    amp_dtype: Any
    batch: int  # per process: the global batch is train.batch_size whatever the number of processes
    train: tuple  # (x, y)
    val: tuple
    input_shape: tuple
    n_classes: int
    class_weight: Any = None  # one loss weight per class on the device (train.class_weight: balanced), or None
    text: dict | None = None  # a table with text: where each row's token ids sit (tasks/common/tables.py text_layout)


@dataclass
class Progress:
    """Where a run is: the best epoch so far (its weights), every epoch's row, and the MLflow run it logs to."""

    best: dict = field(default_factory=lambda: {"loss": float("inf"), "epoch": 0, "state": None, "accuracy": 0.0})
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0  # 0 for a fresh start
    epochs_run: int = 0
    run_id: str | None = None


def build(params: Params, prepared_dir: Path, world, n_classes: int) -> Fit:
    """The model, optimiser and data of a new run, seeded (`n_classes`: every class, even one a split lacks)."""
    import torch

    from tasks.nn.device import resolve_device, seed_everything, set_threads
    from tasks.nn.models import build_model
    from tasks.nn.optim import build_optimizer, build_schedule

    cfg = params.train
    device = resolve_device(cfg.device, world.local_rank)
    set_threads(cfg.threads, device)
    seed_everything(params.base.seed)
    (x_train, y_train), (x_val, y_val), streamed = _load_data(prepared_dir, device, cfg.preload_max_mb)
    input_shape = tuple(x_train.shape[1:])
    text = _text_layout(prepared_dir)
    model = build_model(cfg, input_shape, n_classes, text).to(device)
    if device.type == "cuda" and cfg.channels_last and x_train.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
        if not streamed:
            x_train, x_val = (t.to(memory_format=torch.channels_last) for t in (x_train, x_val))
    batch = max(cfg.batch_size // world.size, 1)
    optimizer = build_optimizer(cfg, model.parameters())
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    return Fit(params=params, world=world, device=device, model=model, net=None, optimizer=optimizer,
               scheduler=build_schedule(cfg, optimizer, math.ceil(len(y_train) / world.size / batch)),
               scaler=torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16),
               augment=_augmenter(cfg, device) if x_train.ndim == 4 else None, use_amp=use_amp, amp_dtype=amp_dtype,
               batch=batch, train=(x_train, y_train), val=(x_val, y_val), input_shape=input_shape, n_classes=n_classes,
               class_weight=_class_weight(cfg.class_weight, y_train, n_classes), text=text)


def resume(fit: Fit, path: Path, fingerprint: str) -> Progress:
    """The progress saved at `path` by a run with the same fingerprint (params, data, processes), its state loaded
    into `fit`; a fresh Progress when there is none. Then, its weights final, the model is wrapped for training
    (DDP, torch.compile)."""
    from tasks.nn.checkpoint import load_training_state

    state = load_training_state(path, fingerprint)
    progress = Progress() if state is None else _restored(fit, state, path)
    fit.net = _wrap(fit.model, fit.world, fit.device, fit.params.train.compile)
    return progress


def _restored(fit: Fit, state: dict, path: Path) -> Progress:
    fit.model.load_state_dict(state["model"])
    fit.optimizer.load_state_dict(state["optimizer"])
    fit.scheduler.load_state_dict(state["scheduler"])
    fit.scaler.load_state_dict(state["scaler"])
    log.info("resuming from epoch %d of an interrupted run (%s)", state["epoch"], path)
    return Progress(best=state["best"], history=state["history"], start_epoch=state["epoch"],
                    epochs_run=state["epoch"], run_id=state["run_id"])


def save(fit: Fit, progress: Progress, path: Path, fingerprint: str) -> None:
    """What `resume` needs to go on after this epoch (rank 0 only)."""
    from tasks.nn.checkpoint import save_training_state

    save_training_state(path, {
        "fingerprint": fingerprint, "epoch": progress.epochs_run, "run_id": progress.run_id,
        "model": fit.model.state_dict(), "optimizer": fit.optimizer.state_dict(),
        "scheduler": fit.scheduler.state_dict(), "scaler": fit.scaler.state_dict(), "best": progress.best,
        "history": progress.history})


def run_epoch(fit: Fit, epoch: int) -> dict:
    """One pass over this process's shard, then the validation loss: the epoch's row (losses, accuracies, lr,
    throughput), averaged over the processes."""
    from tasks.nn.distributed import epoch_order, mean_over_ranks
    from tasks.nn.epoch import evaluate_loss, train_epoch

    cfg, seed, world = fit.params.train, fit.params.base.seed, fit.world
    (x_train, y_train), (x_val, y_val) = fit.train, fit.val
    _reseed(seed, epoch, world.rank, fit.augment)  # per-epoch seeds: a resumed run draws what the original would
    order = epoch_order(len(y_train), epoch, seed, world).to(fit.device)
    tick = time.perf_counter()
    loss, acc = train_epoch(fit.net, fit.optimizer, fit.scaler, x_train, y_train, order, fit.batch,
                            scheduler=fit.scheduler, augment=fit.augment, use_amp=fit.use_amp,
                            amp_dtype=fit.amp_dtype, label_smoothing=cfg.label_smoothing,
                            class_weight=fit.class_weight)
    seconds = time.perf_counter() - tick
    val_loss, val_acc = evaluate_loss(fit.model, x_val, y_val, cfg.batch_size)
    return {"epoch": epoch + 1, "train_loss": mean_over_ranks(loss, world, fit.device),
            "train_accuracy": mean_over_ranks(acc, world, fit.device), "val_loss": val_loss, "val_accuracy": val_acc,
            "lr": fit.optimizer.param_groups[0]["lr"], "samples_per_s": len(y_train) / seconds}


def record(fit: Fit, progress: Progress, row: dict) -> bool:
    """`row` into the history, the best epoch kept; whether training should stop early (no val-loss gain for
    train.patience epochs)."""
    progress.history.append(row)
    progress.epochs_run = row["epoch"]
    if row["val_loss"] < progress.best["loss"]:
        progress.best = {"loss": row["val_loss"], "epoch": row["epoch"], "state": copy.deepcopy(fit.model.state_dict()),
                         "accuracy": row["val_accuracy"]}
    return progress.epochs_run - progress.best["epoch"] >= fit.params.train.patience


def _class_weight(policy: str, y_train, n_classes: int):
    """`balanced`: n / (classes × rows of the class) per class, as scikit-learn's class_weight="balanced" (a class
    the train split lacks gets 1); `none`: None (every example counts the same)."""
    import torch

    if policy == "none":
        return None
    counts = torch.bincount(y_train, minlength=n_classes).float()
    present = counts > 0
    weights = torch.ones(n_classes, device=y_train.device)
    weights[present] = len(y_train) / (int(present.sum()) * counts[present])
    return weights


def _text_layout(prepared_dir: Path) -> dict | None:
    from tasks.common.dataset import prepared_meta
    from tasks.shipped.text import text_layout

    meta = prepared_meta(prepared_dir)
    return text_layout(meta.encoding, meta.features) if meta.kind == "table" else None


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
