"""The model families params.yaml can select: a small CNN (default) and an MLP."""

from __future__ import annotations

import torch
from torch import nn

from tasks.config import TrainParams


class CNN(nn.Module):
    """Three 3×3 conv blocks, one 2× pooling, global average pooling, a linear head."""

    def __init__(self, channels: tuple[int, int, int], n_classes: int, dropout: float) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            _conv_block(1, c1),
            _conv_block(c1, c2),
            nn.MaxPool2d(2),
            _conv_block(c2, c3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c3, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MLP(nn.Module):
    """Flattened pixels through ReLU hidden layers."""

    def __init__(self, n_inputs: int, hidden: tuple[int, ...], n_classes: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_inputs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(params: TrainParams, input_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """The model `params.model` names, sized for `input_shape` (C, H, W) and `n_classes`."""
    if params.model == "cnn":
        return CNN(params.cnn_channels, n_classes, params.dropout)
    c, h, w = input_shape
    return MLP(c * h * w, params.mlp_hidden, n_classes, params.dropout)
