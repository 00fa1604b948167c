"""One training epoch and one evaluation pass, shared by `train` and the fine-tuning in `compress`."""

from __future__ import annotations

from contextlib import nullcontext


def train_epoch(model, optimizer, scaler, x, y, order, batch_size, *, scheduler=None, augment=None, use_amp=False,
                amp_dtype=None, label_smoothing=0.0, loss_fn=None) -> tuple[float, float]:
    """One pass over `x[order]` in batches; returns mean loss and accuracy (one device sync, at the end).

    `loss_fn(logits, idx)` replaces cross-entropy on `y[idx]` (distillation needs the batch's indices).
    """
    import torch
    import torch.nn.functional as F

    model.train()
    total = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = x[idx] if augment is None else augment(x[idx])
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype) if use_amp else nullcontext():
            logits = model(inputs)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=label_smoothing) if loss_fn is None else loss_fn(logits, idx)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y[idx]).sum()
    return float(total / len(order)), float(correct / len(order))


def evaluate_loss(model, x, y, batch_size) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    import torch.nn.functional as F

    logits = predict_logits(model, x, batch_size).float()
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def predict_logits(model, x, batch_size):
    """`model`'s logits over all of `x`, in eval mode, batch by batch."""
    import torch

    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def epoch_progress(epochs: int, desc: str = "train", disable: bool = False, initial: int = 0):
    """A tqdm bar over epochs (it disappears when done, the log keeps the summary)."""
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=initial, desc=desc, unit="epoch", leave=False, disable=disable)
