"""New data read a chunk at a time, in the forms training data comes in: a table file (CSV, TSV, Parquet) or a
folder of PNG/JPEG images (any nesting; no labels needed). Only one chunk is held at a time: memory does not grow
with the input."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.common.errors import DataError

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class Chunk:
    index: int
    ids: list  # row numbers in the input (tables) or file paths relative to the input folder (images)
    data: object  # a DataFrame of raw rows, or a list of image files' bytes


def input_kind(path: Path) -> str:
    if path.is_dir():
        return "images"
    if path.suffix.lower() in TABLE_SUFFIXES:
        return "table"
    raise DataError(f"{path}: expected a CSV, TSV or Parquet file, or a folder of PNG/JPEG images")


def image_files(folder: Path) -> list[str]:
    """The image files under `folder` as paths relative to it, sorted; hidden files and folders left out."""
    import os

    found = []
    for top, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".")]
        prefix = os.path.relpath(top, folder)
        found += [name if prefix == "." else f"{prefix}/{name}" for name in files
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES]
    if not found:
        raise DataError(f"{folder}: no PNG or JPEG files in it")
    return sorted(found)


def digest(path: Path, files: list[str] | None = None) -> str:
    """SHA-256 of the input's content (a folder: each image's relative path and bytes, `files` when listed
    already), read in blocks."""
    sha = hashlib.sha256()
    if path.is_dir():
        files = files if files is not None else image_files(path)
    for name in files if path.is_dir() else [None]:
        file = path / name if name is not None else path
        if name is not None:
            sha.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def chunks(path: Path, rows: int, files: list[str] | None = None) -> Iterator[Chunk]:
    """The input `rows` rows (or files: `files` when listed already) at a time, in order."""
    if path.is_dir():
        files = files if files is not None else image_files(path)
        for index, start in enumerate(range(0, len(files), rows)):
            batch = files[start:start + rows]
            yield Chunk(index, batch, [(path / name).read_bytes() for name in batch])
        return
    import pandas as pd

    separator = TABLE_SUFFIXES[path.suffix.lower()]
    if separator is None:
        import pyarrow.parquet as pq

        frames = (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=rows))
    else:
        frames = pd.read_csv(path, sep=separator, chunksize=rows)
    start = 0
    for index, frame in enumerate(frames):
        yield Chunk(index, list(range(start, start + len(frame))), frame)
        start += len(frame)


def columns(path: Path) -> list[str]:
    """A table file's column names, from its header or schema alone."""
    import pandas as pd

    separator = TABLE_SUFFIXES[path.suffix.lower()]
    if separator is None:
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, sep=separator, nrows=0).columns)
