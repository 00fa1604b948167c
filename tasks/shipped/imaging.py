"""How an image file becomes model input, shared by ingest (image folders) and the Bento's /predict_image.

Pillow only: the Bento ships this module next to its service, so what is served decodes exactly as what was
trained on.
"""

from __future__ import annotations

import io

import numpy as np

IMAGE_FORMATS = ("PNG", "JPEG")
# A progressive JPEG is decoded once per scan: a few kilobytes of repeated scans cost seconds of CPU at the pixel
# limit (300 scans of a 4000×4000 image: 4 s), which no request timeout stops. libjpeg writes 6 (gray) or 10 (colour).
MAX_JPEG_SCANS = 16


class NotAnImage(ValueError):
    """The bytes are not a PNG or JPEG image Pillow can read."""


COLOUR_MODES = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}  # Pillow modes that can hold colour


def decode_image(source, size: tuple[int, int], channels: int = 1, max_pixels: int | None = None) -> np.ndarray:
    """A PNG or JPEG file (path, file object or bytes), grayscale or colour, converted to `channels` (1: grayscale,
    3: RGB) and resized to `size` (H, W) with bilinear resampling: an H×W (or H×W×3) float32 array of
    intensities 0–255. With `max_pixels`, a larger image is refused from its header, before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = _bytes_of(source)
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                raise NotAnImage(f"a {image.format} image; only PNG and JPEG are accepted")
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise NotAnImage(f"{image.width}×{image.height} pixels; the limit is {max_pixels:,} pixels "
                                 "(scale it down before sending)")
            scans = data.count(b"\xff\xda") if image.format == "JPEG" else 0  # SOS markers (0xFF in data is stuffed)
            if scans > MAX_JPEG_SCANS:
                raise NotAnImage(f"a JPEG of {scans} scans; the limit is {MAX_JPEG_SCANS} (encoders write 6 to 10; "
                                 "each scan is decoded in full)")
            converted = image.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(converted, dtype=np.float32)
    except NotAnImage:
        raise
    except UnidentifiedImageError as err:
        raise NotAnImage("not a readable PNG or JPEG image (Pillow cannot identify it)") from err
    except Exception as err:  # noqa: BLE001 - a broken file makes Pillow raise OSError, SyntaxError, ValueError, ...
        raise NotAnImage(f"not a readable PNG or JPEG image ({type(err).__name__}: {str(err)[:200]})") from err


def _bytes_of(source) -> bytes:
    """The whole file: its scans are counted before it is decoded."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()
    from pathlib import Path

    return Path(source).read_bytes()
