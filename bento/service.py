"""The Bento service: `POST /predict` takes a batch of raw images and answers classes and probabilities.

The model is the compressed ONNX variant the pipeline chose, referenced by tag (a build argument) and
loaded with ONNX Runtime: no pickle is ever loaded. Requests are checked against the model's metadata
(image shape, intensity range) and answered 400 with a message when they do not fit.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from bentoml.validators import DType
from pydantic import BaseModel, Field


class ServiceArgs(BaseModel):
    model_tag: str = "digits-classifier:latest"
    max_batch_size: int = 256
    max_latency_ms: int = 20
    max_images_per_request: int = 1024


args = bentoml.use_arguments(ServiceArgs)


class Prediction(BaseModel):
    classes: list[int] = Field(description="the most probable class of each image")
    probabilities: list[list[float]] = Field(description="per image, the probability of each class")


@bentoml.service(name="digits_classifier", traffic={"timeout": 30})
class DigitsClassifier:
    model_ref = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        import onnxruntime as ort

        meta = self.model_ref.info.metadata
        self.image_shape = tuple(meta["input_shape"][1:])
        self.pixel_max = float(meta["pixel_max"])
        self.kind = meta.get("kind", "images")  # "table": rows already encoded as in data/prepared/meta.json
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(self.model_ref.path_of("model.onnx"), providers=providers)

    @bentoml.api(batchable=True, max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms)
    def probabilities(self, images: Annotated[np.ndarray, DType("float32")]) -> np.ndarray:
        """Class probabilities for a batch of already-checked images (adaptively batched across requests)."""
        return self.session.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]

    @bentoml.api
    async def predict(self, images: Annotated[np.ndarray, DType("float32")]) -> Prediction:
        """Classify a batch of images: N×H×W raw intensities in [0, pixel_max] (8×8 and 0–16 for the digits)."""
        self._check(images)
        # Through the service's own proxy, so that concurrent requests share adaptive batches.
        probabilities = await self.to_async.probabilities(images)
        return Prediction(classes=probabilities.argmax(1).tolist(), probabilities=probabilities.tolist())

    def _check(self, images: np.ndarray) -> None:
        if images.ndim != 1 + len(self.image_shape) or tuple(images.shape[1:]) != self.image_shape:
            raise InvalidArgument(f"images must have shape (N, {', '.join(map(str, self.image_shape))}); got {images.shape}")
        if len(images) == 0:
            raise InvalidArgument("images is an empty batch")
        if len(images) > args.max_images_per_request:
            raise InvalidArgument(f"{len(images)} images in one request; the limit is {args.max_images_per_request}")
        if not np.isfinite(images).all():
            raise InvalidArgument("images contain NaN or infinite values")
        low, high = float(images.min()), float(images.max())
        if self.kind == "images" and (low < 0 or high > self.pixel_max):
            raise InvalidArgument(f"pixel values must lie in [0, {self.pixel_max:g}]; got [{low:g}, {high:g}]")
