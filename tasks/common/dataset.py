"""The on-disk form of a data split: `x.npy` (float32, N×C×H×W or N×F) and `y.npy` (int64), memory-mappable."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import write_with

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def save_split(directory: Path, split: Split) -> None:
    """Write one split; each array file appears atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in (("x", split.x), ("y", split.y)):
        write_with(directory / f"{name}.npy", lambda tmp, a=array: save_npy(tmp, a))


def save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)


def load_split(directory: Path, mmap: bool = False) -> Split:
    """Read one split written by `save_split`."""
    mode = "r" if mmap else None
    return Split(x=np.load(directory / "x.npy", mmap_mode=mode), y=np.load(directory / "y.npy", mmap_mode=mode))


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes: the hash DVC records for a file."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_md5(directory: Path) -> str:
    """A content hash of a folder of files (names and bytes), stable across machines."""
    digest = hashlib.md5()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(file_md5(path).encode())
    return digest.hexdigest()


def served_inputs(x: np.ndarray, pixel_max: float) -> np.ndarray:
    """Prepared N×C×H×W images back to the raw intensities the service receives: N×H×W for one channel, N×H×W×C
    for colour (encoded table rows, N×F, stay as they are)."""
    x = np.asarray(x)
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x * np.float32(pixel_max), dtype=np.float32)


def prepared_meta(prepared_dir: Path):
    """What ingest found and prepare did (tasks/common/outputs.py DataDescription): kind, classes, scale, encoding."""
    from tasks.common.outputs import DataDescription

    return DataDescription.read(Path(prepared_dir) / "meta.json")
