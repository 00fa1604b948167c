"""Stage `prepare`: a seeded, stratified train/val/test split of the raw data, as model-ready arrays.

Images are scaled to [0, 1] (N×1×H×W). A table's features are imputed, standardised and one-hot encoded
by an encoder fitted on the train split only (N×F); each split's original rows are kept beside the arrays
(`rows.parquet`) for validation. `meta.json` says which kind of data this is and how it was encoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_json, write_with
from tasks.common.config import Params, PrepareParams
from tasks.common.dataset import Split, save_split
from tasks.common.errors import DataError
from tasks.common.layout import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    rows: dict[str, int]


def prepare(params: PrepareParams, seed: int, raw_dir: Path, out_dir: Path) -> PrepareResult:
    """Split `raw_dir` into `out_dir/{train,val,test}`, stratified by label and reproducible by seed."""
    if (raw_dir / "table.parquet").is_file():
        return _prepare_table(params, seed, raw_dir, out_dir)
    images = np.load(raw_dir / "images.npy", allow_pickle=False)
    labels = np.load(raw_dir / "labels.npy", allow_pickle=False)
    x = (images / np.float32(params.pixel_max)).astype(np.float32)[:, None, :, :]
    splits = split_stratified(x, labels, params.val_fraction, params.test_fraction, seed)
    for name, split in splits.items():
        save_split(out_dir / name, split)
        (out_dir / name / "rows.parquet").unlink(missing_ok=True)
    write_json(out_dir / "meta.json", {"kind": "images", "pixel_max": params.pixel_max, "image_shape": list(images.shape[1:])})
    rows = {name: len(split) for name, split in splits.items()}
    log.info("split %d rows into %s", len(labels), rows)
    return PrepareResult(rows=rows)


def _prepare_table(params: PrepareParams, seed: int, raw_dir: Path, out_dir: Path) -> PrepareResult:
    import pandas as pd

    from tasks.common.tables import LABEL, describe, encode, fit_encoder

    frame = pd.read_parquet(raw_dir / "table.parquet")
    labels = frame[LABEL].to_numpy(np.int64)
    parts = split_stratified(np.arange(len(frame)), labels, params.val_fraction, params.test_fraction, seed)
    tables = {name: frame.iloc[part.x].reset_index(drop=True) for name, part in parts.items()}
    encoder = fit_encoder(tables["train"])  # imputation medians, scales and categories from train rows only
    for name, table in tables.items():
        save_split(out_dir / name, Split(x=encode(encoder, table), y=table[LABEL].to_numpy(np.int64)))
        write_with(out_dir / name / "rows.parquet", lambda tmp, t=table: t.to_parquet(tmp, index=False))
    n_features = int(encode(encoder, tables["val"].head(1)).shape[1])
    write_json(out_dir / "meta.json", {"kind": "table", "pixel_max": 1.0, "features": n_features, "encoding": describe(encoder)})
    rows = {name: len(table) for name, table in tables.items()}
    log.info("split %d table rows into %s; %d encoded features", len(frame), rows, n_features)
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


def run(params: Params, layout: Layout) -> PrepareResult:
    """The stage as dvc.yaml runs it (`python -m tasks.prepare`): params.yaml's values, the project's paths."""
    return prepare(params.prepare, params.base.seed, layout.raw, layout.prepared)
