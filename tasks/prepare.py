"""Stage `prepare`: a seeded, stratified train/val/test split of the raw data, scaled to [0, 1]."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import PrepareParams
from tasks.dataset import Split, save_split
from tasks.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    rows: dict[str, int]


def prepare(params: PrepareParams, seed: int, raw_dir: Path, out_dir: Path) -> PrepareResult:
    """Split `raw_dir` into `out_dir/{train,val,test}`, stratified by label and reproducible by seed."""
    images = np.load(raw_dir / "images.npy", allow_pickle=False)
    labels = np.load(raw_dir / "labels.npy", allow_pickle=False)
    x = (images / np.float32(params.pixel_max)).astype(np.float32)[:, None, :, :]
    splits = split_stratified(x, labels, params.val_fraction, params.test_fraction, seed)
    for name, split in splits.items():
        save_split(out_dir / name, split)
    rows = {name: len(split) for name, split in splits.items()}
    log.info("split %d rows into %s", len(labels), rows)
    return PrepareResult(rows=rows)


def split_stratified(
    x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, Split]:
    """Two stratified cuts: test off the whole set, then val off the rest."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"need at least 2 classes to split, found {classes.tolist()}")
    rare = classes[counts < 3].tolist()
    if rare:
        raise DataError(f"classes {rare} have fewer than 3 rows: too few to stratify into train/val/test")
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return {
        name: Split(x=x[np.sort(part)], y=y[np.sort(part)])
        for name, part in (("train", train), ("val", val), ("test", test))
    }
