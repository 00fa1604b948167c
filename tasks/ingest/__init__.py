"""Stage `ingest`: take the configured source in as the raw data version.

Images become `images.npy` (N×H×W) and `labels.npy`; a table becomes `table.parquet` with its label column
named `label`. `prepare` tells the two apart by which files are there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_with
from tasks.common.config import IngestParams, Params
from tasks.common.dataset import directory_md5, save_npy
from tasks.common.errors import DataError
from tasks.common.layout import Layout

log = logging.getLogger(__name__)
TABLE_FILE = "table.parquet"


@dataclass(frozen=True)
class IngestResult:
    rows: int
    image_shape: tuple[int, ...]  # H, W for images; (number of feature columns,) for a table
    md5: str


def ingest(params: IngestParams, root: Path, raw_dir: Path) -> IngestResult:
    """Write the raw data version of `params.source` into `raw_dir`."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    if params.source == "table":
        return _ingest_table(params, root, raw_dir)
    images, labels = _read_source(params, root)
    for name, array in (("images.npy", images), ("labels.npy", labels)):
        write_with(raw_dir / name, lambda tmp, a=array: save_npy(tmp, a))
    (raw_dir / TABLE_FILE).unlink(missing_ok=True)  # a folder holds one kind of raw data version
    result = IngestResult(rows=len(labels), image_shape=tuple(images.shape[1:]), md5=directory_md5(raw_dir))
    log.info("ingested %d rows of %s images from %s", result.rows, result.image_shape, params.source)
    return result


def _ingest_table(params: IngestParams, root: Path, raw_dir: Path) -> IngestResult:
    from tasks.common.tables import find_table, read_table

    frame = read_table(find_table(root / params.path), params.label_column)
    write_with(raw_dir / TABLE_FILE, lambda tmp: frame.to_parquet(tmp, index=False))
    for name in ("images.npy", "labels.npy"):
        (raw_dir / name).unlink(missing_ok=True)
    result = IngestResult(rows=len(frame), image_shape=(frame.shape[1] - 1,), md5=directory_md5(raw_dir))
    log.info("ingested a table of %d rows and %d feature columns from %s", result.rows, result.image_shape[0], params.path)
    return result


def _read_source(params: IngestParams, root: Path) -> tuple[np.ndarray, np.ndarray]:
    from tasks.ingest import sources

    if params.source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    folder = root / params.path
    if not folder.is_dir():
        raise DataError(f"ingest.path: {folder} is not a folder")
    if params.source == "arrays":
        return sources.read_arrays(folder)
    if params.source == "idx":
        return sources.read_idx(folder)
    return sources.read_image_folder(folder, params.image_size)


def run(params: Params, layout: Layout) -> IngestResult:
    """The stage as dvc.yaml runs it (`python -m tasks.ingest`): params.yaml's values, the project's paths."""
    return ingest(params.ingest, layout.root, layout.raw)
