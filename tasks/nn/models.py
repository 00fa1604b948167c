"""The model families params.yaml can select: a small CNN (default), an MLP and a small Vision Transformer."""

from __future__ import annotations

import torch
from torch import nn

from tasks.common.config import TrainParams


class CNN(nn.Module):
    """Three 3×3 conv blocks, one 2× pooling, global average pooling, a linear head."""

    def __init__(self, channels: tuple[int, int, int], n_classes: int, dropout: float, in_channels: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            _conv_block(in_channels, c1),
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


class ViT(nn.Module):
    """A small Vision Transformer: non-overlapping patches, a class token, pre-norm encoder blocks, a linear head."""

    def __init__(self, image_size: tuple[int, int], channels: int, patch: int, dim: int, depth: int, heads: int,
                 n_classes: int, dropout: float) -> None:
        super().__init__()
        h, w = image_size
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.position  # shape[0]: a dynamic batch in ONNX
        return self.head(self.encoder(tokens)[:, 0])


def build_model(params: TrainParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The model `params.model` names, sized for `input_shape` (C, H, W for images; F for a table) and `n_classes`."""
    if len(input_shape) == 1:  # encoded table features
        if params.model not in ("mlp", "auto"):
            from tasks.common.errors import ConfigError

            raise ConfigError(f"train.model={params.model} needs images; a table trains with train.model: mlp")
        return MLP(input_shape[0], params.mlp_hidden, n_classes, params.dropout)
    c, h, w = input_shape
    if params.model in ("cnn", "auto"):
        return CNN(params.cnn_channels, n_classes, params.dropout, in_channels=c)
    if params.model == "vit":
        if h % params.vit_patch or w % params.vit_patch:
            from tasks.common.errors import ConfigError

            raise ConfigError(f"train.vit_patch={params.vit_patch} does not divide the {h}×{w} images")
        return ViT((h, w), c, params.vit_patch, params.vit_dim, params.vit_depth, params.vit_heads, n_classes, params.dropout)
    return MLP(c * h * w, params.mlp_hidden, n_classes, params.dropout)
