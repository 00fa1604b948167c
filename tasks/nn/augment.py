"""Image augmentation on the training device: a random affine (rotation, scale, shift) per image, in one batched op."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, generator: torch.Generator, *, rotation: float, scale: float,
                  shift: float) -> torch.Tensor:
    """Rotate by ±`rotation` degrees, scale by 1±`scale` and shift by ±`shift` of the size, each image its own draw.

    Runs where `images` (N×C×H×W) live, so a dataset kept on the GPU is augmented there, with no host copies;
    `generator` must live on the same device.
    """
    n = images.shape[0]
    draws = torch.rand(n, 4, generator=generator, device=images.device, dtype=images.dtype) * 2 - 1  # U(-1, 1)
    angle = draws[:, 0] * math.radians(rotation)
    factor = 1 + draws[:, 1] * scale
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    dx, dy = draws[:, 2] * shift * 2, draws[:, 3] * shift * 2  # grid coordinates span 2 per image side
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
