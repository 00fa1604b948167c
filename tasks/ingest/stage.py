"""Stage `ingest`: take the configured source in as the raw data version.

Images become `images.npy` (N×H×W, or N×H×W×3 for colour) and `labels.npy` (class indices); a table becomes
`table.parquet` with its label column named `label` (class indices); so does a folder of `.txt` files per class
(one column, `text`). `meta.json` (tasks/common/outputs.py
DataDescription) says what was found: the kind of data, the class names in index order, the problem type, the
intensity scale, the image size and channels, the table's columns. `prepare` tells images from a table by it.
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
from tasks.common.outputs import DataDescription
from tasks.ingest.labels import encode_labels

log = logging.getLogger(__name__)
TABLE_FILE = "table.parquet"


@dataclass(frozen=True)
class IngestResult:
    rows: int
    image_shape: tuple[int, ...]  # H, W[, C] for images; (number of feature columns,) for a table
    md5: str
    classes: int = 0


def ingest(params: IngestParams, root: Path, raw_dir: Path) -> IngestResult:
    """Write the raw data version of `params.source` (or, for `auto`, the kind `params.path` holds) into `raw_dir`."""
    from tasks.ingest.sources import detect_source

    raw_dir.mkdir(parents=True, exist_ok=True)
    source = detect_source(root / params.path if params.path else None) if params.source == "auto" else params.source
    if source in ("table", "texts"):
        return _ingest_table(params, root, raw_dir, source)
    images, raw_labels, channels_reason = _read_images(source, params, root)
    labels, vocabulary = encode_labels(raw_labels, f"{params.path or source}: labels")
    pixel_max, reason = pixel_scale(images, source)
    for name, array in (("images.npy", images), ("labels.npy", labels)):
        write_with(raw_dir / name, lambda tmp, a=array: save_npy(tmp, a))
    description = DataDescription(
        kind="images", source=source, classes=vocabulary.classes, problem=vocabulary.problem,
        problem_reason=vocabulary.reason, pixel_max=pixel_max, pixel_max_reason=reason,
        image_shape=list(images.shape[1:3]), channels=images.shape[3] if images.ndim == 4 else 1,
        channels_reason=channels_reason)
    return _finish(raw_dir, description, len(labels), tuple(images.shape[1:]), {TABLE_FILE})


def _ingest_table(params: IngestParams, root: Path, raw_dir: Path, source: str) -> IngestResult:
    """A table (a column of which may be free text), or a folder of .txt files per class as a table of one text
    column."""
    import pandas as pd

    from tasks.common.tables import LABEL, feature_kinds, find_table, infer_text_columns, read_table
    from tasks.ingest.sources import read_text_folder

    if source == "texts":
        texts, names = read_text_folder(root / params.path, params.text_fallback_encoding,
                                        int(params.max_table_mb * 2**20))
        frame, where = pd.DataFrame({"text": texts, LABEL: names}), root / params.path
    else:
        where = find_table(root / params.path)
        frame = read_table(where, params.label_column, int(params.max_table_mb * 2**20), params.text_fallback_encoding)
    frame[LABEL], vocabulary = encode_labels(frame[LABEL], f"{where}: labels")
    text = infer_text_columns(frame, params.text_columns, params.text_min_distinct, params.text_min_words)
    for column in text:  # stored as text whatever the file held (a column of numbers named in text_columns)
        frame[column] = frame[column].map(lambda v: None if pd.isna(v) else str(v)).astype("str")
    write_with(raw_dir / TABLE_FILE, lambda tmp: frame.to_parquet(tmp, index=False))
    numeric, categorical = feature_kinds(frame, text)
    kinds = {**{c: "numeric" for c in numeric}, **{c: "categorical" for c in categorical}, **{c: "text" for c in text}}
    description = DataDescription(
        kind="table", source=source, classes=vocabulary.classes, problem=vocabulary.problem,
        problem_reason=vocabulary.reason, columns={c: kinds[c] for c in frame.columns if c != LABEL})
    if text:
        log.info("text column(s) %s: %s", text, "ingest.text_columns" if params.text_columns else
                 f"inferred (at least {params.text_min_distinct:.0%} distinct, {params.text_min_words:g} words a value)")
    return _finish(raw_dir, description, len(frame), (frame.shape[1] - 1,), {"images.npy", "labels.npy"})


def _finish(raw_dir: Path, description: DataDescription, rows: int, shape: tuple[int, ...], stale: set[str]) -> IngestResult:
    for name in stale:  # a folder holds one kind of raw data version
        (raw_dir / name).unlink(missing_ok=True)
    description.write(raw_dir / "meta.json")
    result = IngestResult(rows=rows, image_shape=shape, md5=directory_md5(raw_dir), classes=len(description.classes))
    shown = ", ".join(description.classes[:12]) + (", …" if len(description.classes) > 12 else "")
    log.info("ingested %d rows (%s, shape %s) from %s; %s problem: %s [%s]", rows, description.kind, shape,
             description.source, description.problem, description.problem_reason, shown)
    return result


def _read_images(source: str, params: IngestParams, root: Path) -> tuple[np.ndarray, np.ndarray | list, str]:
    """Images, their labels as the source holds them, and how the channel count came about."""
    from tasks.ingest import sources

    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images.astype(np.float32), bunch.target.astype(np.int64), "grayscale source"
    folder = root / params.path
    if not folder.is_dir():
        raise DataError(f"ingest.path: {folder} is not a folder")
    if source == "images":
        return sources.read_image_folder(folder, params.image_size, params.channels, params.max_image_side)
    images, labels = sources.read_arrays(folder) if source == "arrays" else sources.read_idx(folder)
    return images, labels, "as stored: N×H×W×3 is RGB, N×H×W grayscale"


def pixel_scale(images: np.ndarray, source: str) -> tuple[float, str]:
    """The intensity of full white in the data's own scale, and how it was told (prepare divides by it)."""
    if source == "digits":
        return 16.0, "scikit-learn's digits hold intensities 0..16"
    if source == "images":
        return 255.0, "PNG and JPEG images decode to 8-bit intensities 0..255"
    if images.dtype == np.uint8:
        return 255.0, "8-bit images (uint8)"
    if images.dtype == np.uint16:
        return 65535.0, "16-bit images (uint16)"
    high = float(np.nanmax(images))
    if high <= 1:
        return 1.0, f"values within [0, 1] (largest {high:g})"
    if high <= 255 and high > 100 and float(np.nanmax(np.abs(images - np.round(images)))) == 0:
        return 255.0, f"whole numbers up to {high:g}: read as 8-bit intensities"
    return high, f"the largest value in the data ({high:g}); set prepare.pixel_max if full white is another value"


def run(params: Params, layout: Layout) -> IngestResult:
    """The stage as dvc.yaml runs it (`python -m tasks.ingest`): params.yaml's values, the project's paths."""
    return ingest(params.ingest, layout.root, layout.raw)
