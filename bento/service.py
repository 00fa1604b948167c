"""The Bento service: the model the pipeline chose, behind validated, adaptively batched HTTP endpoints.

    POST /predict        {"images": N×H×W raw intensities}   → per image, its class and class probabilities
    POST /predict_image  a PNG or JPEG upload (field `image`) → the same for that one image
    POST /predict_rows   {"rows": [{column: value}, ...]} for a model trained on a table → the same per row
    POST /predict_npy    a .npy file (N×H×W float32, or N×F) as the body → a .npy of N×C probabilities (bulk clients)
    GET  /metadata       model name, registry version, variant, metrics, lineage, skew counts
    GET  /recent_inputs  the last `recent_inputs` inputs served (for `python -m tasks.drift`)
    and BentoML's /livez, /readyz, /metrics (Prometheus) and /docs (OpenAPI).

The model is the ONNX file stored with the BentoML model whose tag the build passed in, run by ONNX Runtime:
no pickle is ever loaded. Each request is checked (shape, dtype, finite values, intensity range, batch size)
before it joins an adaptive batch, and answered 400 naming what is wrong. Uploads are decoded by the same
function ingest uses for image folders (tasks/imaging.py, shipped in this Bento). A request body above
`max_request_mb` is answered 413. With BENTO_API_KEY set where the service runs, every endpoint but health,
metrics and docs needs the header `X-API-Key: <that value>` (401 otherwise).

Train/serve skew (tasks/skew.py, shipped in this Bento): every input is checked against the statistics of the
training inputs stored with the model; inputs outside them are still answered, and counted in the Prometheus
counter `input_skew_violations_total{check=...}` and in /metadata. Requests refused for their shape, values
or range are counted there too (check `shape`, `non_finite`, `value_range`). Requests with the header
`X-Warm-Up: 1` (the serving front's warm-up) are answered but neither counted nor kept.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import io
import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml._internal.marshal import dispatcher
from bentoml.exceptions import InvalidArgument
from fastapi import FastAPI, Request, Response
from bentoml.validators import ContentType, DType
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from tasks.imaging import NotAnImage, decode_image
from tasks.rows import BadRow, encode_rows
from tasks.skew import violations


class ServiceArgs(BaseModel):
    """Build arguments (params.yaml `package`, passed by the package stage)."""

    model_tag: str = "digits-classifier:latest"
    batching: bool = True
    max_batch_size: int = 256
    max_latency_ms: int = 1000
    max_batch_wait_ms: float | None = 2.0
    workers: int = 1
    threads: int = 1
    max_images_per_request: int = 1024
    max_request_mb: float = 8.0
    access_log: bool = False
    tracing: bool = False
    inline_inference: bool = True
    recent_inputs: int = 2048


args = bentoml.use_arguments(ServiceArgs)
MODEL = bentoml.models.BentoModel(args.model_tag)
META = MODEL.stored.info.metadata  # resolved at import: the request checks below need the input shape
IMAGE_SHAPE = tuple(int(d) for d in META["input_shape"][1:])
PIXEL_MAX = float(META["pixel_max"])
KIND = META.get("kind", "images")  # "table": /predict_rows takes raw rows; /predict, rows already encoded
API_KEY_ENV = "BENTO_API_KEY"
NPY = "application/x-npy"
EXPECTED = META.get("expectations")  # the training inputs' statistics (package stage); None: not checked
SKEW = bentoml.metrics.Counter(name="input_skew_violations", labelnames=["check"],
                               documentation="served inputs outside what the training inputs looked like, per check")


class _CappedWait(dispatcher.Optimizer):
    """BentoML's batching optimizer with its learned wait capped at `max_batch_wait_ms`.

    BentoML's CorkDispatcher holds a request back, for company, about as long as the recent batches' first requests
    waited: the mean of its last 50 waits, refreshed every 5 s. After a burst (requests queued behind busy batches)
    that mean is high and feeds itself, so at a steady 200 requests/s a lone request kept waiting about 10 ms for
    minutes (p99 6-31 ms across runs). Capped, a request waits at most about the cap for company; under load, the
    requests that arrive while a batch runs still form the next batch."""

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = min(self.wait, args.max_batch_wait_ms / 1000)


if args.max_batch_wait_ms is not None:
    dispatcher.Optimizer = _CappedWait  # read by CorkDispatcher.__init__, which runs after this module is imported
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json", "/")


def _checked_images(images: np.ndarray) -> np.ndarray:
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


# Set for a request carrying `X-Warm-Up: 1` (the serving front's warm-up of a new Bento): its inputs are not
# users' inputs, so they are neither counted nor kept for drift checks.
WARM_UP: contextvars.ContextVar[bool] = contextvars.ContextVar("warm_up", default=False)


class SkewLog:
    """This worker's record of what it was sent: inputs checked, violations and refusals per check, the latest
    inputs. Written per request, before batching, so a warm-up request can be told apart."""

    def __init__(self, keep: int) -> None:
        self.recent: deque[np.ndarray] = deque(maxlen=keep)
        self.checked, self.violations, self.refused, self.lock = 0, {}, {}, threading.Lock()

    def observe(self, inputs: np.ndarray) -> None:
        if WARM_UP.get():
            return
        found = violations(inputs, KIND, EXPECTED) if EXPECTED else {}
        for check, count in found.items():
            SKEW.labels(check=check).inc(count)
        with self.lock:
            self.checked += len(inputs)
            for check, count in found.items():
                self.violations[check] = self.violations.get(check, 0) + count
            self.recent.extend(np.array(inputs, dtype=np.float32))

    def refuse(self, check: str) -> None:
        if WARM_UP.get():
            return
        SKEW.labels(check=check).inc()
        with self.lock:
            self.refused[check] = self.refused.get(check, 0) + 1

    def summary(self) -> dict:
        with self.lock:
            return {"checked_against": (EXPECTED or {}).get("data_version", "nothing (no expectations stored)"),
                    "inputs_checked": self.checked, "violations": {**self.violations}, "refused": {**self.refused}}

    def latest(self) -> list:
        with self.lock:
            return [x.tolist() for x in self.recent]


SEEN = SkewLog(args.recent_inputs)


def _nested_numbers(value) -> np.ndarray:
    """Before BentoML's own conversion: only nested lists of numbers become images; anything else is a 400."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"images must be a nested list of numbers (N×H×W); got a JSON {type(value).__name__}")
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"images must be a nested list of numbers (N×H×W) of one shape: {err}") from None


Images = Annotated[np.ndarray, BeforeValidator(_nested_numbers), DType("float32"), AfterValidator(_checked_images)]


class Prediction(BaseModel):
    label: int = Field(description="the most probable class")
    probabilities: list[float] = Field(description="the probability of each class, in class order")


# Return types with their media type stated: without it, BentoML works the media type out from the output's JSON
# schema, generated anew for every response (a third of a worker's time under load, by py-spy).
Predictions = Annotated[list[Prediction], ContentType("application/json")]
OnePrediction = Annotated[Prediction, ContentType("application/json")]


class Metadata(BaseModel):
    registered_model: str
    model_version: str
    variant: str
    bento_model: str
    kind: str
    input_shape: list[int]
    pixel_max: float
    metrics: dict
    lineage: dict
    compressed_model: dict = Field(default_factory=dict, description="the registry entry of the served variant")
    expectations: dict = Field(default_factory=dict, description="the training inputs' statistics, per statistic")
    skew: dict = Field(default_factory=dict, description="this worker's inputs checked against the training "
                                                         "inputs' statistics, and the violations per check")


class RecentInputs(BaseModel):
    kind: str
    count: int
    inputs: list = Field(description="the last inputs this worker served, oldest first (N×H×W or N×F)")


class Guard:
    """ASGI middleware: the API key when BENTO_API_KEY is set (401), the request size limit (413), a multipart
    body without a boundary (400, where BentoML's parser would answer 500), and one shape for every error answer:
    a JSON object whose `error` names the problem (BentoML answers a validation error with a generic `error` and
    the reasons in `detail`, and its InvalidArgument with a one-element list)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.key = os.environ.get(API_KEY_ENV, "").encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        send = _plain_errors(send)
        headers = dict(scope["headers"])
        if headers.get(b"x-warm-up") == b"1":
            WARM_UP.set(True)  # this request's context only: each ASGI request runs in a task of its own
        if self.key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.key):
            return await _reply(send, 401, f"missing or wrong API key: send the header X-API-Key "
                                            f"(the value of {API_KEY_ENV} where the service runs)")
        kind = headers.get(b"content-type", b"").lower()
        if kind.startswith(b"multipart/") and b"boundary=" not in kind:
            return await _reply(send, 400, "a multipart/form-data request needs a boundary in its Content-Type")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _reply(send, 413, f"request body of {int(declared)} bytes; the limit is {self.max_bytes} "
                                            f"({args.max_request_mb:g} MB): send fewer images per request")
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body has no declared length: read it up to the limit, then hand it on.
            messages, size = [], 0
            while True:
                message = await receive()
                messages.append(message)
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    return await _reply(send, 413, f"request body above the limit of {self.max_bytes} bytes")
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            replay = iter(messages)

            async def receive_replayed():
                return next(replay, None) or await receive()

            return await self.app(scope, receive_replayed, send)
        return await self.app(scope, receive, send)


def _plain_errors(send):
    """Wrap `send` so that a 4xx answer's body becomes {"error": "<what is wrong>", ...}; other answers pass as sent."""
    held: dict = {}

    async def sending(message) -> None:
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            held["start"], held["body"] = message, b""
            return
        if "start" not in held:
            return await send(message)
        held["body"] += message.get("body", b"")
        if message.get("more_body"):
            return
        body = _error_body(held["body"])
        headers = [(k, v) for k, v in held["start"]["headers"] if k.lower() not in (b"content-length", b"content-type")]
        await send({**held["start"], "headers": [*headers, (b"content-type", b"application/json"),
                                                  (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return sending


def _error_body(raw: bytes) -> bytes:
    try:
        found = json.loads(raw)
    except ValueError:
        return json.dumps({"error": raw.decode(errors="replace")[:2000]}).encode()
    if isinstance(found, list) and len(found) == 1 and isinstance(found[0], dict):
        found = found[0]  # BentoML's InvalidArgument answer
    if not isinstance(found, dict):
        return json.dumps({"error": str(found)[:2000]}).encode()
    if isinstance(found.get("detail"), list) and found["detail"]:  # a validation error: its reasons, named
        reasons = [f"{'.'.join(map(str, d.get('loc', ()))) or 'body'}: {str(d.get('msg', '')).removeprefix('Value error, ')}"
                   for d in found["detail"] if isinstance(d, dict)]
        found["error"] = "; ".join(reasons) or found.get("error", "")
    return json.dumps(found).encode()


async def _reply(send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


routes = FastAPI()  # the GET endpoints (BentoML's own are POST)


@bentoml.service(name="digits_classifier", workers=args.workers, threads=args.threads,
                 traffic={"timeout": 30}, metrics={"enabled": True}, logging={"access": {"enabled": args.access_log}},
                 # OpenTelemetry spans cost about a sixth of a worker's time (py-spy); with tracing off, every URL
                 # is excluded from BentoML's tracing middleware (it matches this regex anywhere in the URL).
                 tracing={} if args.tracing else {"excluded_urls": ["/"]})
@bentoml.asgi_app(routes, path="/")
class DigitsClassifier:
    model_ref = MODEL

    def __init__(self) -> None:
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        self.session = ort.InferenceSession(self.model_ref.path_of("model.onnx"), options, providers=providers)
        self.session.run(None, {"images": np.zeros((1, *IMAGE_SHAPE), np.float32)})  # warm: the first run is slow
        self.about = Metadata(
            registered_model=META.get("registered_model", ""), model_version=str(META.get("model_version", "")),
            variant=META.get("variant", ""), bento_model=str(self.model_ref.tag), kind=KIND,
            input_shape=list(IMAGE_SHAPE), pixel_max=PIXEL_MAX, metrics=META.get("metrics", {}),
            lineage=META.get("lineage", {}), compressed_model=META.get("compressed_model", {}),
            expectations=EXPECTED or {})
        for name in ("predict", "predict_rows", "predict_image"):
            # BentoML looks an API method up on this instance for every request, and each lookup rebuilds the
            # bound method with inspect.signature (an eighth of a worker's time, py-spy). An instance attribute
            # shadows the class's non-data descriptor: bound once, here.
            setattr(self, name, getattr(self, name))

    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]

    async def _infer(self, images: np.ndarray) -> np.ndarray:
        """The batched endpoints' model call: on the event loop for a model that takes microseconds (no thread
        hand-off), in a worker thread when `inline_inference` is off (a large model, a GPU)."""
        if args.inline_inference:
            return self._probabilities(images)
        return await asyncio.to_thread(self._probabilities, images)

    @bentoml.api(batchable=args.batching, max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms)
    async def predict(self, images: Images) -> Predictions:
        """Classify a batch of images: N×H×W raw intensities in [0, pixel_max] (8×8 and 0–16 for the digits).

        Concurrent requests are batched together (adaptive batching); each gets its own images' answers."""
        probabilities = await self._infer(images)
        return [Prediction(label=int(p.argmax()), probabilities=p.tolist()) for p in probabilities]

    @bentoml.api
    def predict_rows(self, rows: Annotated[list[dict], Field(min_length=1)]) -> Predictions:
        """Classify raw table rows ({column: value}, null for unknown) for a model trained on a table: encoded
        with the imputation, scaling and one-hot encoding `prepare` fitted on the training split."""
        if KIND != "table":
            raise InvalidArgument("this model takes images (POST /predict), not table rows")
        if len(rows) > args.max_images_per_request:
            raise InvalidArgument(f"{len(rows)} rows in one request; the limit is {args.max_images_per_request}")
        try:
            features = encode_rows(rows, META["encoding"])
        except BadRow as err:
            raise InvalidArgument(str(err)) from err
        SEEN.observe(features)
        return [Prediction(label=int(p.argmax()), probabilities=p.tolist()) for p in self._probabilities(features)]

    @bentoml.api
    def predict_image(self, image: Annotated[Path, ContentType("image/*")]) -> OnePrediction:
        """Classify one uploaded PNG or JPEG: converted to grayscale and resized to the model's H×W with the same
        code as training's image folders, its 0–255 intensities scaled to [0, pixel_max]."""
        if KIND != "images":
            raise InvalidArgument("this model takes table rows, not images")
        try:
            pixels = decode_image(image.read_bytes(), IMAGE_SHAPE) * (PIXEL_MAX / 255.0)
        except NotAnImage as err:
            raise InvalidArgument(f"image: {err}") from err
        SEEN.observe(pixels[None])
        probabilities = self._probabilities(pixels[None])[0]
        return Prediction(label=int(probabilities.argmax()), probabilities=probabilities.tolist())

    @routes.get("/metadata")
    def metadata(self) -> Metadata:
        """Which model this is: registry name and version, compression variant, its test metrics and lineage;
        and the skew this worker has seen: inputs checked, and violations per check."""
        return self.about.model_copy(update={"skew": SEEN.summary()})

    @routes.post("/predict_npy", response_class=Response, responses={200: {"content": {NPY: {}}}})
    async def predict_npy(self, request: Request) -> Response:
        """Classify a batch sent as a .npy file (the body; N×H×W raw intensities, or N×F encoded rows, any real
        dtype): answered with a .npy file of N×C float32 probabilities. The same checks and model as /predict,
        without JSON: for clients that send many images at a time. No pickled object arrays are read."""
        from fastapi.responses import JSONResponse

        try:
            images = np.load(io.BytesIO(await request.body()), allow_pickle=False)
            if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
                raise ValueError(f"images must be real numbers; got dtype {images.dtype}")
            images = _checked_images(np.ascontiguousarray(images, dtype=np.float32))
        except (ValueError, OSError, EOFError) as err:
            return JSONResponse({"error": f"body: {err}"}, status_code=400)
        probabilities = await self._infer(images)
        out = io.BytesIO()
        np.save(out, np.asarray(probabilities, dtype=np.float32), allow_pickle=False)
        return Response(out.getvalue(), media_type=NPY)

    @routes.get("/recent_inputs")
    def recent_inputs(self) -> RecentInputs:
        """The last inputs this worker answered (at most `recent_inputs` of them): what `python -m tasks.drift`
        compares with the training data."""
        kept = SEEN.latest()
        return RecentInputs(kind=KIND, count=len(kept), inputs=kept)


DigitsClassifier.add_asgi_middleware(Guard, max_bytes=int(args.max_request_mb * 1024 * 1024))
