"""Measure a model the way it would be served: CPU latency at batch 1 and 64, and accuracy."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Measurement:
    latency_b1_ms: float
    latency_b64_ms: float
    p95_b1_ms: float
    p95_b64_ms: float
    accuracy: float
    agreement: float  # share of test images whose class equals the fp32 model's


def onnx_predictor(path, threads: int = 0, text: dict | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session as a function from raw images to probabilities; `threads` intra-op threads (0: ONNX
    Runtime's default, a thread per physical core). `text`: where a text model's token ids sit; a model exported
    with a dynamic sequence length then reads each batch cut after its last token, as the service serves it."""
    import onnxruntime as ort

    from tasks.shipped.text import takes_any_length, trimmed

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    layout = text if takes_any_length(session) else None
    return lambda images: session.run(None, {"images": trimmed(images, layout)})[0]


def torch_predictor(model, text: dict | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A torch module (eager, fp32) as a function from raw images to probabilities; `text`: as onnx_predictor's."""
    import torch

    from tasks.shipped.text import trimmed

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(trimmed(images, text))).numpy()

    return predict


def measure(predict, images: np.ndarray, labels: np.ndarray, reference: np.ndarray | None, repeats: int) -> Measurement:
    """Median and p95 latency at batch 1 and 64 (after warm-up), test accuracy and agreement with `reference`."""
    predicted = predicted_classes(predict, images)
    b1 = timings(predict, images[:1], repeats * 4)
    b64 = timings(predict, _batch_of(images, 64), repeats)
    return Measurement(
        latency_b1_ms=float(np.median(b1)),
        latency_b64_ms=float(np.median(b64)),
        p95_b1_ms=float(np.percentile(b1, 95)),
        p95_b64_ms=float(np.percentile(b64, 95)),
        accuracy=float((predicted == labels).mean()),
        agreement=float((predicted == reference).mean()) if reference is not None else 1.0,
    )


def predicted_classes(predict, images: np.ndarray) -> np.ndarray:
    """Argmax classes of `predict` over `images`, in chunks of 256."""
    return np.concatenate([predict(images[i : i + 256]) for i in range(0, len(images), 256)]).argmax(1)


def _batch_of(images: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:size])


def timings(predict, batch: np.ndarray, repeats: int) -> np.ndarray:
    """Milliseconds per call of `predict(batch)`, `repeats` times after five warm-up calls."""
    for _ in range(5):
        predict(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - start) * 1000)
    return np.asarray(times)
