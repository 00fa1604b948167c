"""Request checks: what a request must be before it joins a batch (shape, size, finite values, intensity range).
A ValueError raised here is that request's 400, naming the problem; refusals for what training never saw are
counted as skew."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from bentoml.validators import DType
from pydantic import AfterValidator, BeforeValidator

from bento.service.build import IMAGE_SHAPE, KIND, PIXEL_MAX, args
from bento.service.monitoring import SEEN


def checked_images(images: np.ndarray) -> np.ndarray:
    """One request's images, checked before they join a batch: a ValueError here is that request's 400."""
    expected = f"(N, {', '.join(map(str, IMAGE_SHAPE))})"
    if images.size == 0:
        raise ValueError("images is an empty batch: send at least one image")
    if images.ndim != 1 + len(IMAGE_SHAPE) or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise _refused("shape", f"images must have shape {expected}; got {tuple(images.shape)}")
    if len(images) > args.max_images_per_request:
        raise ValueError(f"{len(images)} images in one request; the limit is {args.max_images_per_request}")
    if not np.isfinite(images).all():
        raise _refused("non_finite", "images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if KIND == "images" and (low < 0 or high > PIXEL_MAX):
        raise _refused("value_range", f"pixel values must lie in [0, {PIXEL_MAX:g}]; got [{low:g}, {high:g}]")
    SEEN.observe(images)
    return images


def read_npy(body: bytes) -> np.ndarray:
    """A .npy body as an array, or a ValueError naming what is wrong. The header is checked before anything is
    allocated: the declared shape and dtype must account for exactly the bytes sent, so a client cannot make the
    service allocate more than its request size limit; no pickle, no .npz archive, real numbers only."""
    import io

    from numpy.lib import format as npy

    if body[:2] == b"PK":
        raise ValueError("an .npz archive: send one array as a .npy file (numpy.save)")
    stream = io.BytesIO(body)
    try:
        version = npy.read_magic(stream)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except Exception as err:  # noqa: BLE001 - a mangled header raises ValueError, SyntaxError, TokenError, ...
        raise ValueError(f"not a readable .npy file ({type(err).__name__}: {str(err)[:200]})") from None
    if dtype.hasobject or dtype.fields is not None or not np.issubdtype(dtype, np.number) \
            or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"images must be real numbers; got dtype {dtype}")
    count = int(np.prod(shape, dtype=np.float64)) if shape else 1
    payload = len(body) - stream.tell()
    if count * dtype.itemsize != payload:
        raise ValueError(f"the header declares shape {tuple(shape)} of {dtype} ({count * dtype.itemsize} bytes), but "
                         f"{payload} bytes follow it")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def _refused(check: str, message: str) -> ValueError:
    """A request refused for what training never saw: counted as skew, then answered 400."""
    SEEN.refuse(check)
    return ValueError(message)


def _nested_numbers(value) -> np.ndarray:
    """Before BentoML's own conversion: only nested lists of numbers become images; anything else is a 400."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"images must be a nested list of numbers (N×H×W); got a JSON {type(value).__name__}")
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as err:  # OverflowError: an integer beyond any float
        raise ValueError(f"images must be a nested list of numbers (N×H×W) of one shape: {err}") from None


Images = Annotated[np.ndarray, BeforeValidator(_nested_numbers), DType("float32"), AfterValidator(checked_images)]
