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


def check_bento(bento_tag: str, inputs: np.ndarray, expected: np.ndarray, max_probability_diff: float,
                ready_timeout_s: float, log_dir: Path, batch: int = 64) -> Readiness:
    """Serve `bento_tag`, POST `inputs` to its /predict `batch` at a time, compare with `expected` probabilities."""
    return asyncio.run(_check(bento_tag, inputs, expected, max_probability_diff, ready_timeout_s, log_dir, batch))


async def _check(tag, inputs, expected, tolerance, ready_timeout_s, log_dir, batch) -> Readiness:
    import aiohttp

    from bento.front.supervisor import BackendFailed, start_backend, stop_backend

    started = time.monotonic()
    elapsed = lambda: time.monotonic() - started  # noqa: E731
    async with aiohttp.ClientSession() as session:
        try:
            backend = await start_backend(tag, log_dir, ready_timeout_s, session)
        except BackendFailed as err:
            return Readiness(False, f"did not start: {err}", tag, seconds=elapsed())
        served: list[list[float]] = []
        try:
            for i in range(0, len(inputs), batch):
                body = {"images": inputs[i : i + batch].tolist()}
                async with session.post(f"{backend.url}/predict", json=body,
                                        timeout=aiohttp.ClientTimeout(total=60)) as answer:
                    if answer.status != 200:
                        return Readiness(False, f"/predict answered {answer.status}: {(await answer.text())[:300]}",
                                         tag, len(served), seconds=elapsed())
                    served.extend(p["probabilities"] for p in await answer.json())
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, TypeError) as err:
            return Readiness(False, f"/predict failed: {err!r}", tag, len(served), seconds=elapsed())
        finally:
            await stop_backend(backend)
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
