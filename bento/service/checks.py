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
    except (TypeError, ValueError) as err:
        raise ValueError(f"images must be a nested list of numbers (N×H×W) of one shape: {err}") from None


Images = Annotated[np.ndarray, BeforeValidator(_nested_numbers), DType("float32"), AfterValidator(checked_images)]
