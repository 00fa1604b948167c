"""The on-disk form of a data split: `x.npy` (float32, N×1×H×W) and `y.npy` (int64), memory-mappable."""

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
    """Prepared N×1×H×W images back to the raw N×H×W intensities the service receives (encoded table rows,
    N×F, stay as they are)."""
    x = np.asarray(x)
    return np.ascontiguousarray((x[:, 0] if x.ndim == 4 else x) * np.float32(pixel_max), dtype=np.float32)


def prepared_meta(prepared_dir: Path) -> dict:
    """What `prepare` wrote about the data: its kind, the intensity scale, the table encoding."""
    import json

    path = Path(prepared_dir) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {"kind": "images"}
