"""Readers for the data sources `ingest` takes in: numpy arrays, MNIST-format IDX files, a folder of images.

Each returns (images N×H×W, or N×H×W×3 for colour, in the source's own dtype and intensity scale; labels as the
source holds them: integers, text, booleans), or raises DataError naming the file and what is wrong with it.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from tasks.common.errors import DataError
from tasks.common.files import readable

log = logging.getLogger(__name__)

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
KINDS = {"image": ("a PNG or JPEG file", "PNG or JPEG images"), "text": ("a .txt file", ".txt files")}
GRAY_TOLERANCE = 8  # intensity levels: JPEG's colour subsampling parts a gray pixel's channels by a few


def detect_source(path: Path | None) -> str:
    """The source kind `path` holds: no path, the bundled digits; a table file (or a folder of exactly one); a folder
    with images.npy; a folder of IDX files; a folder of class sub-folders. Anything else is named."""
    from tasks.common.tables import TABLE_SUFFIXES

    if path is None:
        return "digits"
    if path.is_file():
        if path.suffix.lower() in TABLE_SUFFIXES:
            return "table"
        raise DataError(f"{path}: cannot tell what this file holds: give a .csv, .tsv or .parquet table, or a folder "
                        "(images.npy + labels.npy, IDX files, or one sub-folder of images per class)")
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    names = {p.name for p in entries}
    if "images.npy" in names or "labels.npy" in names:
        return "arrays"
    if any("-images-idx3-ubyte" in n for n in names):
        return "idx"
    if any(p.is_dir() for p in entries):  # class folders: of text files when they hold more .txt than images
        suffixes = Counter(f.suffix.lower() for d in entries if d.is_dir() for f in d.iterdir())
        return "texts" if suffixes[".txt"] > sum(suffixes[s] for s in IMAGE_SUFFIXES) else "images"
    if sum(p.suffix.lower() in TABLE_SUFFIXES for p in entries) == 1:
        return "table"
    raise DataError(f"{path}: cannot tell what this folder holds (found {sorted(names)[:10] or 'nothing'}): expected "
                    "images.npy + labels.npy, '*-images-idx3-ubyte' files, one sub-folder of images (or of .txt files) per "
                    "class, or one .csv/.tsv/.parquet table")


def read_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """`images.npy` (N×H×W or N×H×W×3) and `labels.npy` (N labels: integers, text or booleans)."""
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
            raw = _gunzip(raw, path)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # exact: dimensions whose product overflows int64 cannot wrap
    if len(raw) - header != expected:
        raise DataError(f"{path}: truncated or padded IDX data: shape {shape} needs {expected} bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_image_folder(folder: Path, size: tuple[int, ...], channels: int | str,
                      max_side: int) -> tuple[np.ndarray, list[str], str]:
    """One sub-folder per class, named by the class (any name; numeric names are ordered as numbers later).

    PNG or JPEG, grayscale or colour. `size` (H, W) and `channels` (1 or 3) as given, or from the data: the most
    common image size (its longer side capped at `max_side`, aspect kept), and 3 channels when any image holds
    colour (colour files whose pixels are all gray count as gray). Returns N×H×W (or N×H×W×3) intensities 0–255,
    each image's folder name, and how the channel count was chosen."""
    from PIL import Image, UnidentifiedImageError

    from tasks.shipped.imaging import COLOUR_MODES

    files = _class_files(folder)
    sizes, colour_files = Counter(), 0
    for path, _ in files:  # headers only: Pillow reads the size and mode without decoding the pixels
        try:
            with Image.open(path) as image:
                sizes[(image.height, image.width)] += 1
                colour_files += image.mode in COLOUR_MODES
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{path}: not a readable PNG or JPEG image ({err})") from err
        except Exception as err:  # noqa: BLE001 - a header that claims billions of pixels (DecompressionBombError),
            # a chunk length that is garbage (SyntaxError), ...: the file is named, never a traceback
            raise DataError(f"{path}: not a usable PNG or JPEG image ({type(err).__name__}: {str(err)[:200]})") from err
    size = tuple(size) or _capped(sizes.most_common(1)[0][0], max_side)
    names = [name for _, name in files]
    if channels != "auto":
        return _decode_all(files, size, int(channels)), names, f"ingest.channels: {channels}"
    if not colour_files:
        return _decode_all(files, size, 1), names, "every file is grayscale"
    images = _decode_all(files, size, 3)
    spread = np.abs(np.diff(images, axis=-1)).max(axis=(1, 2, 3))  # per image: how far its channels part
    coloured = int((spread > GRAY_TOLERANCE).sum())
    if coloured:
        return images, names, f"{coloured} of {len(files)} images hold colour: RGB kept"
    return _decode_all(files, size, 1), names, f"{colour_files} colour file(s), but every pixel is gray: 1 channel"


def _decode_all(files: list[tuple[Path, str]], size: tuple[int, int], channels: int) -> np.ndarray:
    from tasks.shipped.imaging import NotAnImage, decode_image

    images = []
    for path, _ in _progress(files, "decoding images"):
        try:
            images.append(decode_image(path, size, channels))
        except NotAnImage as err:
            raise DataError(f"{path}: {err}") from err
    return np.stack(images)


def read_text_folder(folder: Path, fallback: str = "", max_bytes: int = 2**30) -> tuple[list[str], list[str]]:
    """One sub-folder of `.txt` files per class (scikit-learn's `load_files` layout): each file's text (UTF-8, a
    byte-order mark dropped; another encoding only as `fallback` names it, else refused naming the file and the
    first bad byte) and its class folder's name. Files of more than `max_bytes` together are refused unread."""
    files = _class_files(folder, {".txt"}, "text")
    total = sum(path.stat().st_size for path, _ in files)
    if total > max_bytes:
        raise DataError(f"{folder}: {len(files):,} text files of {total:,} bytes together, over ingest.max_table_mb "
                        f"({max_bytes / 2**20:g} MB): refused before reading (raise it for data this large)")
    texts = [_decoded(path, fallback) for path, _ in _progress(files, "reading texts")]
    return texts, [name for _, name in files]


def _decoded(path: Path, fallback: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if not fallback:
            raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}): save it as "
                            "UTF-8, or name its encoding in ingest.text_fallback_encoding") from err
    try:
        text = raw.decode(fallback)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: neither UTF-8 nor {fallback} (ingest.text_fallback_encoding): byte "
                        f"0x{raw[err.start]:02x} at offset {err.start}") from err
    log.info("%s: not UTF-8, read as %s (ingest.text_fallback_encoding)", path, fallback)
    return text


def _class_files(folder: Path, suffixes: set[str] = IMAGE_SUFFIXES, what: str = "image") -> list[tuple[Path, str]]:
    """Every image (or text file) with its class folder's name; anything else in the tree stops ingest, naming it."""
    if not folder.is_dir():
        raise DataError(f"{folder}: is not a folder")
    files, classes = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            raise DataError(f"{entry}: a hidden {'folder' if entry.is_dir() else 'file'} among the class folders; "
                            "remove it (every sub-folder is a class)")
        if not entry.is_dir():
            raise DataError(f"{entry}: a file beside the class folders; {what}s go in one sub-folder per class")
        classes.append(entry.name)
        inside = sorted(entry.iterdir())
        if not inside:
            raise DataError(f"{entry}: the class folder '{entry.name}' is empty")
        for path in inside:
            if path.name.startswith(".") or path.is_dir() or path.suffix.lower() not in suffixes:
                found = "a hidden file" if path.name.startswith(".") else "a folder" if path.is_dir() else \
                    f"not {KINDS[what][0]} (found suffix '{path.suffix}')"
                raise DataError(f"{path}: {found}; a class folder holds only {KINDS[what][1]}")
            if not readable(path, folder):  # opening a FIFO blocks for ever; a link out reads another file
                raise DataError(f"{path}: not a regular file inside {folder} (a FIFO, a device, a link out of the "
                                "folder or a dangling link): refused, never opened")
            files.append((path, entry.name))
    if len(classes) < 2:
        raise DataError(f"{folder}: expected one sub-folder per class (at least 2), found {classes}")
    return files


def _capped(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`size` scaled down so that its longer side is at most `max_side`, aspect kept."""
    h, w = size
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _progress(items, description: str):
    """A progress bar on a terminal for long loops; plain iteration otherwise (logs, tests)."""
    import sys

    if len(items) < 2000 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="file")


MAX_INFLATED_BYTES = 4 * 2**30  # a gzip IDX file may inflate to this; more is a bomb (or a file for another tool)


def _gunzip(raw: bytes, path: Path) -> bytes:
    """`raw` inflated, a block at a time, refused beyond MAX_INFLATED_BYTES (a 4 MB bomb inflates to terabytes)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out, size, pending = [], 0, raw
    while not inflater.eof:
        block = inflater.decompress(pending, 1 << 24)
        if not block and not inflater.unconsumed_tail and not inflater.eof:
            raise DataError(f"{path}: a truncated gzip stream")
        size += len(block)
        if size > MAX_INFLATED_BYTES:
            raise DataError(f"{path}: inflates to more than {MAX_INFLATED_BYTES / 2**30:g} GiB: refused (a gzip bomb, "
                            "or not MNIST-format data)")
        out.append(block)
        pending = inflater.unconsumed_tail
    return b"".join(out)


def _load_npy(path: Path) -> np.ndarray:
    """An .npy array, its header checked against the file's length before anything is allocated (memory-mapped,
    then read): a 100-byte file declaring petabytes is refused, as are pickles and .npz archives."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty (0 bytes)")
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray):  # an .npz archive under an .npy name
            raise DataError(f"{path}: an .npz archive, not one array: save each array with numpy.save")
        return np.array(mapped)
    except FileNotFoundError as err:
        raise DataError(f"{path} not found") from err
    except (ValueError, EOFError, OSError, OverflowError, MemoryError) as err:  # truncated, declared larger than the
        # file, not an .npy file, a pickle
        raise DataError(f"{path} is not a readable .npy array: {type(err).__name__}: {str(err)[:200]}") from err


def _checked(images_path: Path, images: np.ndarray, labels_path: Path, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if images.size == 0:
        raise DataError(f"{images_path}: holds no images (shape {images.shape})")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
        raise DataError(f"{images_path}: expected N×H×W (grayscale) or N×H×W×3 (RGB) images, found shape {images.shape}")
    if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
        raise DataError(f"{images_path}: images must be real numbers, found dtype {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: expected {len(images)} labels (one per image), found shape {labels.shape}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return images, labels
