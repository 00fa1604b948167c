"""Stage `prepare`: a seeded, stratified train/val/test split of the raw data, as model-ready arrays; identical
examples always land in the same split, so val and test never hold a copy of a training example.

Images are scaled to [0, 1] by the intensity of full white (N×C×H×W). A table's features are imputed, standardised and one-hot encoded
by an encoder fitted on the train split only, a text column becomes token ids with a tokenizer learnt from the
train split (N×F); each split's original rows are kept beside the arrays
(`rows.parquet`) for validation. `meta.json` is ingest's description of the data (classes, kind, shape) with the
scale used and, for a table, the encoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_with
from tasks.common.config import Params, PrepareParams
from tasks.common.dataset import Split, save_split
from tasks.common.errors import DataError
from tasks.common.layout import Layout
from tasks.common.outputs import DataDescription

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    rows: dict[str, int]


def prepare(params: PrepareParams, seed: int, raw_dir: Path, out_dir: Path) -> PrepareResult:
    """Split `raw_dir` into `out_dir/{train,val,test}`, stratified by label and reproducible by seed."""
    data = DataDescription.read(raw_dir / "meta.json")
    if data.kind == "table":
        return _prepare_table(params, seed, raw_dir, out_dir, data)
    images = np.load(raw_dir / "images.npy", allow_pickle=False)
    labels = np.load(raw_dir / "labels.npy", allow_pickle=False)
    pixel_max = data.pixel_max if params.pixel_max == "auto" else float(params.pixel_max)
    x = (images / np.float32(pixel_max)).astype(np.float32)
    x = x[:, None, :, :] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # N×C×H×W
    splits = split_stratified(x, labels, params.val_fraction, params.test_fraction, seed, data.classes,
                              groups=example_keys(x))
    for name, split in splits.items():
        save_split(out_dir / name, split)
        (out_dir / name / "rows.parquet").unlink(missing_ok=True)
    reason = data.pixel_max_reason if params.pixel_max == "auto" else "prepare.pixel_max"
    data.model_copy(update={"pixel_max": pixel_max, "pixel_max_reason": reason}).write(out_dir / "meta.json")
    rows = {name: len(split) for name, split in splits.items()}
    log.info("split %d rows into %s; intensities divided by %g (%s)", len(labels), rows, pixel_max, reason)
    return PrepareResult(rows=rows)


def _prepare_table(params: PrepareParams, seed: int, raw_dir: Path, out_dir: Path, data: DataDescription) -> PrepareResult:
    import pandas as pd

    from tasks.common.tables import LABEL, describe, encode, example_keys, fit_encoder, text_of

    frame = pd.read_parquet(raw_dir / "table.parquet")
    labels = frame[LABEL].to_numpy(np.int64)
    text = text_of(data.columns)
    parts = split_stratified(np.arange(len(frame)), labels, params.val_fraction, params.test_fraction, seed, data.classes,
                             groups=example_keys(frame.drop(columns=[LABEL]), text))
    tables = {name: frame.iloc[part.x].reset_index(drop=True) for name, part in parts.items()}
    # imputation medians, scales, categories and the tokenizer's vocabulary: from the train rows only
    encoder = fit_encoder(tables["train"], text, params.vocab_size, params.max_tokens)
    for name, table in tables.items():
        save_split(out_dir / name, Split(x=encode(encoder, table), y=table[LABEL].to_numpy(np.int64)))
        write_with(out_dir / name / "rows.parquet", lambda tmp, t=table: t.to_parquet(tmp, index=False))
    n_features = int(encode(encoder, tables["val"].head(1)).shape[1])
    data.model_copy(update={"features": n_features, "encoding": describe(encoder)}).write(out_dir / "meta.json")
    rows = {name: len(table) for name, table in tables.items()}
    log.info("split %d table rows into %s; %d encoded features", len(frame), rows, n_features)
    return PrepareResult(rows=rows)


def split_stratified(
    x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int, names: list[str] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, Split]:
    """Two stratified cuts: test off the whole set, then val off the rest. With `groups` (one key per row: identical
    examples share it), whole groups are cut, so no example of val or test is identical to a training one: real
    data holds duplicates (the same message sent twice, the same customer row exported twice), and a row split would
    put copies on both sides. A group is stratified by its first row's label."""
    from sklearn.model_selection import train_test_split

    keys = np.arange(len(y)) if groups is None else groups
    _, first, member = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups numbered by first appearance: data without duplicates splits as row by row
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    first, member = first[order], rank[member.ravel()]
    group_y = y[first]
    classes, counts = np.unique(group_y, return_counts=True)
    name = (lambda k: names[k]) if names else str  # noqa: E731
    if len(np.unique(y)) < 2:
        raise DataError(f"need at least 2 classes to split, found {[name(k) for k in np.unique(y).tolist()]}")
    rare = {name(k): int(c) for k, c in zip(classes.tolist(), counts) if c < 3}
    if rare:
        raise DataError(f"classes with fewer than 3 distinct examples, too few to stratify into train/val/test: {rare} "
                        "(distinct examples per class; identical rows count once)")
    idx = np.arange(len(first))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=group_y, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=group_y[rest], random_state=seed)
    rows = {name: np.flatnonzero(np.isin(member, part)) for name, part in (("train", train), ("val", val), ("test", test))}
    return {name: Split(x=x[part], y=y[part]) for name, part in rows.items()}


def example_keys(x: np.ndarray) -> np.ndarray:
    """One key per example: identical examples (the same values, as training sees them) share it."""
    import hashlib

    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return np.array([hashlib.md5(row.tobytes()).hexdigest() for row in flat])


def run(params: Params, layout: Layout) -> PrepareResult:
    """The stage as dvc.yaml runs it (`python -m tasks.prepare`): params.yaml's values, the project's paths."""
    return prepare(params.prepare, params.base.seed, layout.raw, layout.prepared)
