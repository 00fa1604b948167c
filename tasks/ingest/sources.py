"""Readers for the data sources `ingest` takes in: numpy arrays, MNIST-format IDX files, a folder of images.

Each returns (images N×H×W float32 in the source's own intensity scale, labels int64), or raises DataError
naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from tasks.common.errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """`images.npy` (N×H×W) and `labels.npy` (N integers)."""
    return _checked(folder / "images.npy", _load_npy(folder / "images.npy"), folder / "labels.npy", _load_npy(folder / "labels.npy"))


def read_idx(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every `<prefix>-images-idx3-ubyte[.gz]` with its `<prefix>-labels-idx1-ubyte[.gz]` (MNIST's train and t10k)."""
    pairs = []
    for images_path in sorted(p for p in folder.iterdir() if "-images-idx3-ubyte" in p.name):
        labels_path = images_path.with_name(images_path.name.replace("-images-idx3-", "-labels-idx1-"))
        if not labels_path.exists():
            raise DataError(f"{images_path}: no labels file beside it (expected {labels_path.name})")
        pairs.append(_checked(images_path, read_idx_file(images_path), labels_path, read_idx_file(labels_path)))
    if not pairs:
        raise DataError(f"{folder}: no '*-images-idx3-ubyte[.gz]' files found")
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def read_idx_file(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not): a 4-byte magic (0, 0, dtype, ndim), big-endian dims, then the data."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: truncated or padded IDX data: shape {shape} needs {expected} bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_image_folder(folder: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One sub-folder per class (its name the label: digits, or any names, numbered in sorted order).

    PNG or JPEG, grayscale or RGB (converted to grayscale), resized to `size` (H, W); intensities 0–255.
    """
    from tasks.shipped.imaging import NotAnImage, decode_image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    if len(classes) < 2:
        raise DataError(f"{folder}: expected one sub-folder per class (at least 2), found {classes}")
    numeric = all(c.isdigit() for c in classes)
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{path}: not a PNG or JPEG file (found suffix '{path.suffix}')")
            try:
                images.append(decode_image(path, size))
            except NotAnImage as err:
                raise DataError(f"{path}: {err}") from err
            labels.append(int(name) if numeric else index)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise DataError(f"{path} not found") from err
    except ValueError as err:  # truncated or not an .npy file (pickles are refused too)
        raise DataError(f"{path} is not a readable .npy array: {err}") from err


def _checked(images_path: Path, images: np.ndarray, labels_path: Path, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected N×H×W images, found shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: expected {len(images)} labels (one per image), found shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: labels must be integers, found dtype {labels.dtype}")
    return images.astype(np.float32), labels.astype(np.int64)
