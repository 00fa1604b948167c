"""An MNIST-size dataset built from the bundled digits: 28×28 images, 60k for training, augmented, no download.

Each 8×8 digit is upscaled into the 20×20 box MNIST centres its digits in, then moved by a random affine
(rotation, scale, shift) and quantised to 0–255 as MNIST is. Train, val and test are rendered from disjoint
sets of source digits, so no test image is an augmented copy of a training one.
"""

from __future__ import annotations

import numpy as np

from tasks.common.dataset import Split

SIZES = {"train": 60_000, "val": 6_000, "test": 10_000}
SOURCE_SHARE = {"train": 0.7, "val": 0.1, "test": 0.2}


def build(seed: int = 0, sizes: dict[str, int] = SIZES) -> dict[str, Split]:
    """The three splits, images N×1×28×28 in [0, 1] (float32), labels int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    splits, start = {}, 0
    for name, size in sizes.items():
        count = int(round(SOURCE_SHARE[name] * len(order)))
        sources = order[start : start + count]
        start += count
        picks = rng.choice(sources, size)
        splits[name] = Split(x=_render(digits.images[picks] / 16.0, rng), y=digits.target[picks].astype(np.int64))
    return splits


def _render(images: np.ndarray, rng: np.random.Generator, chunk: int = 10_000) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), 1, 28, 28), dtype=np.float32)
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i : i + chunk, None].astype(np.float32))
        x = F.pad(F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
        n = len(x)
        angle = torch.from_numpy(rng.uniform(-15, 15, n)).float().deg2rad()
        scale = torch.from_numpy(rng.uniform(0.85, 1.15, n)).float()
        shift = torch.from_numpy(rng.uniform(-0.12, 0.12, (n, 2))).float()  # ±1.7 px in normalised coordinates
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[i : i + n] = (x.clamp(0, 1) * 255).round().numpy() / 255  # MNIST's 8-bit intensities
    return out
