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


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, sorted, hidden files and folders left out."""
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not found:
        raise DataError(f"{folder}: no PNG or JPEG files in it")
    return sorted(found)


def digest(path: Path) -> str:
    """SHA-256 of the input's content (a folder: each image's relative path and bytes), read in blocks."""
    sha = hashlib.sha256()
    files = image_files(path) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            sha.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def chunks(path: Path, rows: int) -> Iterator[Chunk]:
    """The input `rows` rows (or files) at a time, in order."""
    if path.is_dir():
        files = image_files(path)
        for index, start in enumerate(range(0, len(files), rows)):
            batch = files[start:start + rows]
            yield Chunk(index, [f.relative_to(path).as_posix() for f in batch], [f.read_bytes() for f in batch])
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
