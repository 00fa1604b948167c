"""Stage `ingest`: take the configured source in as the raw data version (`images.npy`, `labels.npy`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import IngestParams
from tasks.dataset import directory_md5, save_npy
from tasks.atomic import write_with
from tasks.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    rows: int
    image_shape: tuple[int, int]
    md5: str


def ingest(params: IngestParams, root: Path, raw_dir: Path) -> IngestResult:
    """Write the raw data version of `params.source` into `raw_dir`."""
    images, labels = _read_source(params, root)
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, array in (("images.npy", images), ("labels.npy", labels)):
        write_with(raw_dir / name, lambda tmp, a=array: save_npy(tmp, a))
    result = IngestResult(rows=len(labels), image_shape=tuple(images.shape[1:]), md5=directory_md5(raw_dir))
    log.info("ingested %d rows of %s images from %s", result.rows, result.image_shape, params.source)
    return result


def _read_source(params: IngestParams, root: Path) -> tuple[np.ndarray, np.ndarray]:
    from tasks import sources

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
