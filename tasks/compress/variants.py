"""How each compressed variant is made: ONNX export, structured pruning with fine-tuning, static int8 quantization."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_with

log = logging.getLogger(__name__)


def servable(model, pixel_max: float, image_input: bool = True):
    """Wrap `model` so it takes raw N×H×W intensities (N×H×W×C for colour, channels last as images are stored;
    or N×F encoded table rows) and returns class probabilities."""
    import torch
    from torch import nn

    class Servable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("scale", torch.tensor(1.0 / pixel_max))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if image_input:  # to the network's N×C×H×W (fixed when exported: the ONNX input has the served shape)
                images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
            return torch.softmax(self.model(images * self.scale), dim=1)

    return Servable().eval()


def export_onnx(model, example: np.ndarray, path: Path, any_length: bool = False) -> None:
    """Export a servable model to ONNX with a dynamic batch axis, atomically; `any_length`: a text model's rows of
    any width too (a dynamic sequence length: tasks/shipped/text.py trimmed)."""
    import torch

    axes = {0: "batch", 1: "features"} if any_length else {0: "batch"}

    def write(tmp: Path) -> None:
        torch.onnx.export(
            model.eval(), (torch.from_numpy(example),), str(tmp), dynamo=False, opset_version=17,
            input_names=["images"], output_names=["probabilities"],
            dynamic_axes={"images": axes, "probabilities": {0: "batch"}},
        )

    write_with(path, write)


def prune_channels(model, example_x: np.ndarray, ratio: float, n_classes: int):
    """Remove `ratio` of the channels/neurons of every prunable layer for real (Torch-Pruning), keeping the head."""
    import torch
    import torch_pruning as tp
    from torch import nn

    pruned = copy.deepcopy(model).cpu().eval()
    head = [m for m in pruned.modules() if isinstance(m, nn.Linear) and m.out_features == n_classes]
    # A text model's layer over the table's other columns is kept whole: Torch-Pruning cut its outputs without
    # cutting the head's LayerNorm over [those outputs, the pooled text] to match (the model then failed to run)
    beside_text = [m for m in (getattr(pruned, "dense_net", None) or []) if isinstance(m, nn.Linear)]
    pruner = tp.pruner.MetaPruner(
        pruned, torch.from_numpy(example_x[:2]), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=head + beside_text,
    )
    pruner.step()
    return pruned


def fine_tune(model, train_x, train_y, val_x, val_y, *, epochs: int, lr: float, batch_size: int, seed: int,
              teacher=None, temperature: float = 4.0, distill_weight: float = 0.0):
    """Recover accuracy after pruning: AdamW with cosine decay, keeping the epoch with the lowest val loss.

    With a `teacher` and `distill_weight` > 0 the loss mixes the labels with the teacher's softened outputs
    (Hinton et al. knowledge distillation), which recovers more of the fp32 model's accuracy than labels alone.
    """
    import torch
    import torch.nn.functional as F

    from tasks.nn.distributed import World, epoch_order
    from tasks.nn.epoch import epoch_progress, evaluate_loss, predict_logits, train_epoch

    x, y = torch.from_numpy(np.asarray(train_x)), torch.from_numpy(np.asarray(train_y))
    vx, vy = torch.from_numpy(np.asarray(val_x)), torch.from_numpy(np.asarray(val_y))
    loss_fn = None
    if teacher is not None and distill_weight > 0:
        soft = F.softmax(predict_logits(teacher, x, batch_size) / temperature, dim=1)

        def loss_fn(logits, idx):
            # T² keeps the soft-target gradients on the same scale as the hard-label ones
            kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft[idx], reduction="batchmean") * temperature**2
            return distill_weight * kd + (1 - distill_weight) * F.cross_entropy(logits, y[idx])

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    best_loss, best_state = evaluate_loss(model, vx, vy, batch_size)[0], copy.deepcopy(model.state_dict())
    progress = epoch_progress(epochs, "fine-tune")
    for epoch in range(epochs):
        train_epoch(model, optimizer, scaler, x, y, epoch_order(len(y), epoch, seed, World()), batch_size, loss_fn=loss_fn)
        scheduler.step()
        loss, _ = evaluate_loss(model, vx, vy, batch_size)
        if loss < best_loss:
            best_loss, best_state = loss, copy.deepcopy(model.state_dict())
        progress.update()
    progress.close()
    model.load_state_dict(best_state)
    return model.eval()


def quantize_dynamic_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 of the linear layers (weights int8 ahead of time, activations scaled per batch): no calibration."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    write_with(out_path, lambda tmp: quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8,
                                                      op_types_to_quantize=["MatMul", "Gemm"], per_channel=True))


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, method: str = "minmax") -> None:
    """Post-training static int8 (QDQ, per-channel weights) with ONNX Runtime, calibrated on training images.

    The first convolution stays fp32: with one input channel int8 saves almost nothing there, and on the
    pruned MNIST-size model quantizing it cost 5.7 accuracy points against 0.25 with it kept in fp32. An embedding
    table (a Gather from a weight: text models) is quantized too: with a vocabulary of 8,000 it is most of the
    model, and without it int8 made a text model 4 % smaller (2.27 MB to 2.19 MB; with it, 0.65 MB). Gathers of
    activations (indexing) stay as they are.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    usable = len(calibration) // 64 * 64 or len(calibration)  # equal batches: the histogram calibrators stack them

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i : i + 64]} for i in range(0, usable, 64)])

        def get_next(self):
            return next(self.batches, None)

    # minmax keeps the whole observed range; percentile clips the top 0.001 % (outliers); entropy minimises KL
    calibrator = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[method]
    prepared = out_path.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        weights = {i.name for i in graph.initializer}
        first_conv = [n.name for n in graph.node if n.op_type == "Conv"][:1]
        indexing = [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] not in weights]
        write_with(
            out_path,
            lambda tmp: quantize_static(
                str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv", "Gemm", "MatMul", "Gather"], nodes_to_exclude=first_conv + indexing,
                calibrate_method=calibrator,
            ),
        )
    finally:
        prepared.unlink(missing_ok=True)
