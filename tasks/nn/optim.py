"""The optimizer and learning-rate schedule params.yaml names; the schedule steps once per batch."""

from __future__ import annotations

import torch

from tasks.common.config import TrainParams


def build_optimizer(cfg: TrainParams, parameters) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_schedule(cfg: TrainParams, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Cosine decay to zero, or one-cycle (warm-up then anneal), over all the batches of `cfg.epochs`."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
