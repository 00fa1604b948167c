"""What the build passed (params.yaml's `package` section, as BentoML build arguments) and what the stored model
says about its inputs; resolved when `bentoml serve` imports the service, before any request."""

from __future__ import annotations

import math

import bentoml
from bentoml._internal.marshal import dispatcher
from pydantic import BaseModel


class ServiceArgs(BaseModel):
    """Build arguments: params.yaml's `package` section (tasks/common/config.py PackageParams, the same names and
    defaults: tests/unit/test_structure.py), passed by the package stage with the model's tag."""

    model_tag: str = "digits-classifier:latest"
    service_name: str = "digits_classifier"
    batching: bool = True
    max_batch_size: int = 256
    max_latency_ms: int = 1000
    max_batch_wait_ms: float | None = 2.0
    workers: int = 1
    threads: int = 1
    max_images_per_request: int = 1024
    max_request_mb: float = 8.0
    max_concurrent_requests: int = 32
    max_inflight_mb: float = 2.0
    body_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 10.0
    max_connections_per_client: int = 128
    max_image_pixels: int = 16_000_000
    max_text_chars: int = 20_000
    access_log: bool = False
    tracing: bool = False
    inline_inference: bool = True
    recent_inputs: int = 2048


args = bentoml.use_arguments(ServiceArgs)
MODEL = bentoml.models.BentoModel(args.model_tag)
META = MODEL.stored.info.metadata  # resolved at import: the request checks below need the input shape
IMAGE_SHAPE = tuple(int(d) for d in META["served_shape"])  # one example: H, W (grayscale), H, W, C (colour) or F
PIXEL_MAX = float(META["pixel_max"])
KIND = META.get("kind", "images")  # "table": /predict_rows takes raw rows; /predict, rows already encoded
CHANNELS = IMAGE_SHAPE[2] if KIND == "images" and len(IMAGE_SHAPE) == 3 else 1
CLASSES = [str(c) for c in META["classes"]]  # the model's output i is the class CLASSES[i]
TEXT = [c["column"] for c in META.get("encoding", {}).get("text", [])]  # a table model's text columns, in order
OTHER_COLUMNS = [c["column"] for part in ("numeric", "categorical") for c in META.get("encoding", {}).get(part, [])]
TEXT_ALONE = len(TEXT) == 1 and not OTHER_COLUMNS  # /predict_text serves it: one text column and nothing else
EXPECTED = META.get("expectations")  # the training inputs' statistics (package stage); None: not checked


def body_limit(path: str) -> int:
    """The largest request body `path` takes, in bytes: `max_request_mb`, and for /predict's JSON what its largest
    request needs (40 bytes a number is room for any number and indentation): a JSON body is parsed on the event
    loop, so a bigger one would stall other requests for nothing."""
    limit = int(args.max_request_mb * 1024 * 1024)
    if path == "/predict":
        return min(limit, args.max_images_per_request * math.prod(IMAGE_SHAPE) * 40 + 65536)
    return limit


class CappedWait(dispatcher.Optimizer):
    """BentoML's batching optimizer with its learned wait capped at `max_batch_wait_ms` (installed by patches.py).

    BentoML's CorkDispatcher holds a request back, for company, about as long as the recent batches' first requests
    waited: the mean of its last 50 waits, refreshed every 5 s. After a burst (requests queued behind busy batches)
    that mean is high and feeds itself, so at a steady 200 requests/s a lone request kept waiting about 10 ms for
    minutes (p99 6-31 ms across runs). Capped, a request waits at most about the cap for company; under load, the
    requests that arrive while a batch runs still form the next batch."""

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = min(self.wait, args.max_batch_wait_ms / 1000)
