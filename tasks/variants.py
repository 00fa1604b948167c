"""How each compressed variant is made: ONNX export, structured pruning with fine-tuning, static int8 quantization."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from tasks.atomic import write_with

log = logging.getLogger(__name__)


def servable(model, pixel_max: float):
    """Wrap `model` so it takes raw N×H×W intensities and returns class probabilities, as the service does."""
    import torch
    from torch import nn

    class Servable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("scale", torch.tensor(1.0 / pixel_max))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(images.unsqueeze(1) * self.scale), dim=1)

    return Servable().eval()


def export_onnx(model, example: np.ndarray, path: Path) -> None:
    """Export a servable model to ONNX with a dynamic batch axis, atomically."""
    import torch

    def write(tmp: Path) -> None:
        torch.onnx.export(
            model.eval(), (torch.from_numpy(example),), str(tmp), dynamo=False, opset_version=17,
            input_names=["images"], output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        )

    write_with(path, write)


def prune_channels(model, example_x: np.ndarray, ratio: float, n_classes: int):
    """Remove `ratio` of the channels/neurons of every prunable layer for real (Torch-Pruning), keeping the head."""
    import torch
    import torch_pruning as tp
    from torch import nn

    pruned = copy.deepcopy(model).cpu().eval()
    head = [m for m in pruned.modules() if isinstance(m, nn.Linear) and m.out_features == n_classes]
    pruner = tp.pruner.MetaPruner(
        pruned, torch.from_numpy(example_x[:2]), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=head,
    )
    pruner.step()
    return pruned


def fine_tune(model, train_x, train_y, val_x, val_y, *, epochs: int, lr: float, batch_size: int, seed: int):
    """Recover accuracy after pruning: AdamW with cosine decay, keeping the epoch with the lowest val loss."""
    import torch

    from tasks.train import evaluate_loss, train_epoch

    x, y = torch.from_numpy(np.asarray(train_x)), torch.from_numpy(np.asarray(train_y))
    vx, vy = torch.from_numpy(np.asarray(val_x)), torch.from_numpy(np.asarray(val_y))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state = evaluate_loss(model, vx, vy, batch_size)[0], copy.deepcopy(model.state_dict())
    for _ in range(epochs):
        train_epoch(model, optimizer, scaler, x, y, batch_size, generator)
        scheduler.step()
        loss, _ = evaluate_loss(model, vx, vy, batch_size)
        if loss < best_loss:
            best_loss, best_state = loss, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval()


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Post-training static int8 (QDQ, per-channel weights) with ONNX Runtime, calibrated on training images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i : i + 64]} for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.batches, None)

    prepared = out_path.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        write_with(
            out_path,
            lambda tmp: quantize_static(
                str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            ),
        )
    finally:
        prepared.unlink(missing_ok=True)
