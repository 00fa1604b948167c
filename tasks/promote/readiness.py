"""Serving readiness, the way TFX's InfraValidator works: a candidate Bento must start and answer like the model.

The Bento is started with `bentoml serve` on a free loopback port (bento/front.py's start: /readyz, then
warm-up requests), sent inputs drawn from the test split over HTTP, and its answers compared with the same
ONNX model run in this process. It is stopped afterwards, whatever happened.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str
    bento: str
    samples: int = 0  # inputs answered
    label_agreement: float = 0.0  # share of them whose label equals the in-process model's
    max_probability_diff: float = float("nan")
    seconds: float = 0.0  # start to stop


def check_bento(bento_tag: str, inputs, expected: np.ndarray, classes: list[str], max_probability_diff: float,
                ready_timeout_s: float, log_dir: Path, batch: int = 64) -> Readiness:
    """Serve `bento_tag`, POST `inputs` `batch` at a time, compare with `expected` probabilities (columns in the
    order of `classes`). An array of images goes to /predict; a list of raw table rows ({column: value}) to
    /predict_rows, so that the service's own encoding of rows is checked too."""
    return asyncio.run(_check(bento_tag, inputs, expected, classes, max_probability_diff, ready_timeout_s, log_dir, batch))


async def _check(tag, inputs, expected, classes, tolerance, ready_timeout_s, log_dir, batch) -> Readiness:
    import aiohttp

    from bento.front.supervisor import BackendFailed, start_backend, stop_backend

    started = time.monotonic()
    elapsed = lambda: time.monotonic() - started  # noqa: E731
    async with aiohttp.ClientSession() as session:
        try:
            backend = await start_backend(tag, log_dir, ready_timeout_s, session)
        except BackendFailed as err:
            return Readiness(False, f"did not start: {err}", tag, seconds=elapsed())
        endpoint, key = ("/predict_rows", "rows") if isinstance(inputs, list) else ("/predict", "images")
        served: list[list[float]] = []
        labels: list[str] = []
        try:
            for i in range(0, len(inputs), batch):
                chunk = inputs[i : i + batch]
                body = {key: chunk if isinstance(chunk, list) else chunk.tolist()}
                async with session.post(f"{backend.url}{endpoint}", json=body,
                                        timeout=aiohttp.ClientTimeout(total=60)) as answer:
                    if answer.status != 200:
                        return Readiness(False, f"{endpoint} answered {answer.status}: {(await answer.text())[:300]}",
                                         tag, len(served), seconds=elapsed())
                    for prediction in await answer.json():
                        served.append([prediction["probabilities"][c] for c in classes])
                        labels.append(prediction["label"])
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, TypeError) as err:
            return Readiness(False, f"{endpoint} failed: {err!r}", tag, len(served), seconds=elapsed())
        finally:
            await stop_backend(backend)
    wrong_names = sum(label != classes[k] for label, k in zip(labels, np.asarray(served).argmax(1)))
    if wrong_names:
        return Readiness(False, f"{wrong_names} answer(s) named another class than their highest probability's", tag,
                         len(served), seconds=elapsed())
    return compare(tag, np.asarray(served, dtype=np.float64), expected, tolerance, elapsed())


def compare(tag: str, served: np.ndarray, expected: np.ndarray, tolerance: float, seconds: float = 0.0) -> Readiness:
    """The served answers against the in-process ones: every label equal, every probability within `tolerance`."""
    if served.shape != expected.shape:
        return Readiness(False, f"answered {served.shape} probabilities for {expected.shape} expected", tag,
                         len(served), seconds=seconds)
    agreement = float(np.mean(served.argmax(1) == expected.argmax(1)))
    diff = float(np.max(np.abs(served - expected))) if served.size else 0.0
    ok = agreement == 1.0 and diff <= tolerance
    reason = (f"{len(served)} test inputs: labels {agreement:.2%} equal to the in-process model's, largest "
              f"probability difference {diff:.2e} ({'within' if diff <= tolerance else 'above'} {tolerance:g})")
    return Readiness(ok, reason, tag, len(served), agreement, diff, seconds)
