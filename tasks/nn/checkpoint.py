"""Model checkpoints: a network's weights, or a tree ensemble's ONNX graph, plus everything needed to rebuild the
model; loaded without unpickling code (tensors, bytes and plain values only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.common.atomic import write_with
from tasks.common.config import TrainParams
from tasks.nn.models import build_model


def save_checkpoint(path: Path, model: nn.Module, *, params: dict, input_shape, n_classes: int, extra: dict,
                    text: dict | None = None) -> None:
    """Write weights, the resolved config and provenance atomically (`text`: where a row's token ids sit)."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "params": params,
        "input_shape": list(input_shape),
        "n_classes": n_classes,
        "text": text,
        **extra,
    }
    write_with(path, lambda tmp: torch.save(payload, tmp))


class TreeModel:
    """A tree ensemble as its checkpoint holds it (ONNX, tasks/train/trees.py), run by ONNX Runtime."""

    family = "tree"

    def __init__(self, onnx: bytes) -> None:
        import onnxruntime as ort

        self.onnx = onnx
        self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of encoded rows (N×F)."""
        return self.session.run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def nodes(self) -> int:
        """Decision and leaf nodes in the ensemble: its size, as parameters are a network's."""
        import onnx

        graph = onnx.load_from_string(self.onnx).graph
        return sum(len(a.ints) for n in graph.node for a in n.attribute if a.name == "nodes_nodeids")


def save_tree_checkpoint(path: Path, onnx: bytes, *, params: dict, input_shape, n_classes: int, extra: dict) -> None:
    """Write a tree ensemble's ONNX graph with the resolved config and provenance, atomically."""
    payload = {"family": "tree", "onnx": onnx, "params": params, "input_shape": list(input_shape),
               "n_classes": n_classes, "text": None, **extra}
    write_with(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> tuple[nn.Module | TreeModel, dict]:
    """Rebuild the model a checkpoint describes (a network in eval mode on the CPU, or a TreeModel) and return it
    with the payload."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("family") == "tree":
        return TreeModel(payload["onnx"]), payload
    train_params = TrainParams.model_validate(payload["params"]["train"])
    model = build_model(train_params, tuple(payload["input_shape"]), payload["n_classes"], payload.get("text"))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def save_training_state(path: Path, state: dict) -> None:
    """The resumable state after an epoch (weights, optimizer, schedule, RNG, history), written atomically."""
    write_with(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path, fingerprint: str) -> dict | None:
    """The state saved by an interrupted run of the same params and data, or None (nothing to resume)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if state.get("fingerprint") == fingerprint else None
