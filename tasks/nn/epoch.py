"""One training epoch and one evaluation pass, shared by `train` and the fine-tuning in `compress`."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np


def train_epoch(model, optimizer, scaler, x, y, order, batch_size, *, scheduler=None, augment=None, use_amp=False,
                amp_dtype=None, label_smoothing=0.0, loss_fn=None, class_weight=None) -> tuple[float, float]:
    """One pass over `x[order]` in batches; returns mean loss and accuracy (one device sync, at the end).

    `x` is a tensor on the device, or a host array (a memory-mapped split) read batch by batch; `y` and
    `order` are on the device. `loss_fn(logits, idx)` replaces cross-entropy on `y[idx]` (distillation
    needs the batch's indices). `class_weight`: one loss weight per class (a tensor on the device), or None.
    """
    import torch
    import torch.nn.functional as F

    model.train()
    device = y.device
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = rows(x, idx, device)
        inputs = inputs if augment is None else augment(inputs)
        with torch.autocast(device_type=device.type, dtype=amp_dtype) if use_amp else nullcontext():
            logits = model(inputs)
            loss = (F.cross_entropy(logits, y[idx], weight=class_weight, label_smoothing=label_smoothing)
                    if loss_fn is None else loss_fn(logits, idx))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y[idx]).sum()
    return float(total / len(order)), float(correct / len(order))


def rows(x, idx, device):
    """`x[idx]` on `device`: indexed in place for a device tensor, gathered from the host array otherwise."""
    import torch

    if isinstance(x, np.ndarray):  # streamed: only this batch is ever copied into memory
        return torch.from_numpy(np.ascontiguousarray(x[idx.cpu().numpy()])).to(device, non_blocking=True)
    return x[idx]


def evaluate_loss(model, x, y, batch_size) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    import torch.nn.functional as F

    logits = predict_logits(model, x, batch_size).float()
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def predict_logits(model, x, batch_size):
    """`model`'s logits over all of `x`, in eval mode, batch by batch."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        return torch.cat([model(_slice(x, i, i + batch_size, device)) for i in range(0, len(x), batch_size)])


def _slice(x, start: int, stop: int, device):
    import torch

    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x[start:stop])).to(device, non_blocking=True)
    return x[start:stop]


def epoch_progress(epochs: int, desc: str = "train", disable: bool = False, initial: int = 0):
    """A tqdm bar over epochs (it disappears when done, the log keeps the summary)."""
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=initial, desc=desc, unit="epoch", leave=False, disable=disable)
