"""Request checks: what a request must be before it joins a batch (shape, size, finite values, intensity range).
A ValueError raised here is that request's 400, naming the problem; refusals for what training never saw are
counted as skew."""

from __future__ import annotations

import math

from typing import Annotated

import numpy as np
from pydantic import AfterValidator, Field, Strict, TypeAdapter, ValidationError, WrapValidator

from bento.service.build import IMAGE_SHAPE, KIND, PIXEL_MAX, args
from bento.service.monitoring import SEEN
from tasks.shipped.rows import MAX_ENCODED


def checked_images(images: np.ndarray) -> np.ndarray:
    """One request's images, checked before they join a batch: a ValueError here is that request's 400."""
    expected = f"(N, {', '.join(map(str, IMAGE_SHAPE))})"
    if images.size == 0:
        raise ValueError("images is an empty batch: send at least one image")
    if images.ndim != 1 + len(IMAGE_SHAPE) or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise refused("shape", f"images must have shape {expected}; got {tuple(images.shape)}")
    if len(images) > args.max_images_per_request:
        raise ValueError(f"{len(images)} images in one request; the limit is {args.max_images_per_request}")
    if not np.isfinite(images).all():
        raise refused("non_finite", "images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if KIND == "images" and (low < 0 or high > PIXEL_MAX):
        raise refused("value_range", f"pixel values must lie in [0, {PIXEL_MAX:g}]; got [{low:g}, {high:g}]")
    if KIND == "table" and max(-low, high) > MAX_ENCODED:
        raise refused("value_range", f"encoded values must lie in [-{MAX_ENCODED:g}, {MAX_ENCODED:g}]; got "
                                     f"[{low:g}, {high:g}]")
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
    count = math.prod(shape)  # exact integers: a header declaring (10**400,) or (10**200, 10**200) cannot overflow
    payload = len(body) - stream.tell()
    if count * dtype.itemsize != payload:
        raise ValueError(f"the header declares shape {tuple(shape)} of {dtype} ({count * dtype.itemsize} bytes), but "
                         f"{payload} bytes follow it")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def refused(check: str, message: str) -> ValueError:
    """A request refused for what training never saw: counted as skew, then answered 400."""
    SEEN.refuse(check)
    return ValueError(message)


def _one_input_type():
    """One served input as nested lists of numbers, one level per axis of IMAGE_SHAPE, the sizes and range stated in
    the schema. Strict numbers: JSON booleans and strings are refused, not read as 1.0 and 0.0. The sizes and the
    range are checked by `checked_images`, which counts refusals as skew."""
    low, high = (0, PIXEL_MAX) if KIND == "images" else (-MAX_ENCODED, MAX_ENCODED)
    nested = Annotated[float, Strict(), Field(json_schema_extra={"minimum": low, "maximum": high})]
    for size in reversed(IMAGE_SHAPE):
        nested = Annotated[list[nested], Field(json_schema_extra={"minItems": size, "maxItems": size})]
    return nested


ONE_INPUT = TypeAdapter(_one_input_type())


def _counted_structure(value, handler):
    """A request whose nesting is not the served shape's is refused for its shape, and counted like one."""
    try:
        return handler(value)
    except ValidationError as err:
        if any(e["type"] == "list_type" for e in err.errors(include_url=False)):
            SEEN.refuse("shape")
        raise


def _to_array(value: list) -> np.ndarray:
    return checked_images(np.asarray(value, dtype=np.float32))


Images = Annotated[list[_one_input_type()], Field(json_schema_extra={"minItems": 1, "maxItems": args.max_images_per_request}),
                   WrapValidator(_counted_structure), AfterValidator(_to_array)]
