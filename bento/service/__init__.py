"""The Bento service (the endpoints; the rest of this package by job): the model the pipeline chose, behind validated, adaptively batched HTTP endpoints.

    POST /predict        {"images": N×H×W (N×H×W×C for colour) raw intensities} → per image, its class name (`label`)
                         and the probability of each class, keyed by class name
    POST /predict_image  a PNG or JPEG upload (field `image`) → the same for that one image
    POST /predict_rows   {"rows": [{column: value}, ...]} for a model trained on a table → the same per row
    POST /predict_text   {"texts": ["...", ...]} for a model trained on one text column alone → the same per text
    POST /predict_npy    a .npy file (N×H×W[×C] float32, or N×F) as the body → a .npy of N×K probabilities, column k
                         the class `classes[k]` of /metadata (bulk clients)
    GET  /metadata       model name, registry version, variant, class names in output order, input shape, metrics,
                         lineage, skew counts
    GET  /recent_inputs  the last `recent_inputs` inputs served (for `mlops drift`): only with the header
                         `X-Operator-Key` = BENTO_OPERATOR_KEY where the service runs (403 otherwise; off without one)
    and BentoML's /livez, /readyz, /metrics (Prometheus) and /docs (OpenAPI).

The model is the ONNX file stored with the BentoML model whose tag the build passed in, run by ONNX Runtime:
no pickle is ever loaded. Each request is checked (shape, dtype, finite values, intensity range, batch size)
before it joins an adaptive batch, and answered 400 naming what is wrong. Uploads are decoded by the same
function ingest uses for image folders (tasks/shipped/imaging.py, shipped in this Bento). A request body above
`max_request_mb` is answered 413; beyond `max_concurrent_requests` in progress, 503 with Retry-After. With BENTO_API_KEY set where the service runs, every endpoint but health,
metrics and docs needs the header `X-API-Key: <that value>` (401 otherwise).

Train/serve skew (tasks/shipped/skew.py, shipped in this Bento): every input is checked against the statistics of the
training inputs stored with the model; inputs outside them are still answered, and counted in the Prometheus
counter `input_skew_violations_total{check=...}` and in /metadata. Requests refused for their shape, values
or range are counted there too (check `shape`, `non_finite`, `value_range`). Requests with the header
`X-Warm-Up` carrying the token the serving front gave this process (BENTO_WARM_UP_TOKEN; the front's warm-up) are
answered but neither counted nor kept; any other X-Warm-Up is a user's request like any other.

    build.py       build arguments and the stored model's metadata
    checks.py      request checks before batching
    monitoring.py  train/serve skew counts and the latest inputs
    guard.py       API key, body types and size limits, malformed multipart and non-file uploads, one JSON shape
                   for every 4xx, each logged as one line
    admission.py   503 + Retry-After beyond max_concurrent_requests, at arrival; large /predict bodies read image
                   by image, off the event loop's back
    schema.py      what /docs.json documents: every refusal, required bodies, the API key
    metric_labels.py  one Prometheus label for every path the service does not serve
    patches.py     the one place BentoML's internals are replaced (admission, JSON parsing, metrics labels,
                   batching wait, /docs.json), in request order, each checked before it is replaced
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
import PIL.Image  # noqa: F401 - at start-up: imported by the first upload, it raced BentoML's batch path inspecting PIL
from bentoml.exceptions import InvalidArgument
from bentoml.validators import ContentType
from fastapi import FastAPI, Request, Response
from pydantic import AfterValidator, BaseModel, Field

from bento.service.build import (CHANNELS, CLASSES, EXPECTED, IMAGE_SHAPE, KIND, META, MODEL, OTHER_COLUMNS, PIXEL_MAX,
                                 TEXT, TEXT_ALONE, args)
from bento.service.checks import Images, checked_images, read_npy
from bento.service import metric_labels, patches, schema
from bento.service.guard import Guard, quiet_client_errors
from bento.service.monitoring import SEEN
from tasks.shipped.imaging import NotAnImage, decode_image
from tasks.shipped.rows import BadRow, encode_rows, row_schema
from tasks.shipped.text import takes_any_length, text_layout, text_value, trimmed

NPY = "application/x-npy"
# A request of up to this many rows or texts is encoded and answered on the event loop when `inline_inference` is on
# (no hand-off to a worker thread: most of a one-text request's cost at 1 ms a request); a larger one in a thread,
# so the loop keeps answering others while it tokenizes.
INLINE_ROWS = 16
ROWS_SCHEMA = {"items": row_schema(META["encoding"]), "maxItems": args.max_images_per_request} if KIND == "table" else {}
NPY_BODY = {"requestBody": {"required": True, "description": "one array saved with numpy.save: N×H×W[×C] raw "
                            "intensities (N×F encoded rows for a table model), any real dtype",
                            "content": {NPY: {"schema": {"type": "string", "format": "binary"}}}}}


def _check_text_lengths(rows: list) -> None:
    """Refuse a text over `max_text_chars` before anything tokenizes it (a megabyte string costs the tokenizer
    milliseconds a request and says nothing the first tokens do not)."""
    for i, row in enumerate(rows):
        for column in TEXT if isinstance(row, dict) else ():
            value = row.get(column)
            if isinstance(value, str) and len(value) > args.max_text_chars:
                raise InvalidArgument(f"row {i}, column '{column}': {len(value):,} characters; the limit is "
                                      f"{args.max_text_chars:,} (package.max_text_chars)")


def _checked_texts(texts: list[str]) -> list[str]:
    """One request's texts, checked as the request is read (a ValueError here is its 400): at most
    `max_images_per_request`, none over `max_text_chars`, none that is not Unicode text (a lone surrogate).
    Adaptive batching across requests was measured and left off: one text a request 1070 -> 1169 texts/s, 64 a
    request 11594 -> 6215 (benchmarks/text.py)."""
    if len(texts) > args.max_images_per_request:
        raise ValueError(f"{len(texts)} texts in one request; the limit is {args.max_images_per_request}")
    for i, text in enumerate(texts):
        if len(text) > args.max_text_chars:
            raise ValueError(f"texts[{i}]: {len(text):,} characters; the limit is {args.max_text_chars:,} "
                             "(package.max_text_chars)")
        text_value(text, f"texts[{i}]")  # BadText is a ValueError
    return texts


Texts = Annotated[list[str], Field(min_length=1, json_schema_extra={
    "maxItems": args.max_images_per_request, "items": {"type": "string", "maxLength": args.max_text_chars}}),
    AfterValidator(_checked_texts)]


class Prediction(BaseModel):
    label: str = Field(description="the most probable class's name")
    probabilities: dict[str, float] = Field(description="each class's probability, keyed by class name")


def _answers(probabilities: np.ndarray) -> list[Prediction]:
    """Each row of N×K probabilities as its class name and the probabilities keyed by class name."""
    return [Prediction(label=CLASSES[int(p.argmax())], probabilities=dict(zip(CLASSES, p.tolist())))
            for p in probabilities]


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
    problem: str = Field(description="binary or multiclass")
    classes: list[str] = Field(description="the class names, in the order of the model's outputs (the columns of "
                                           "/predict_npy's answer)")
    input_shape: list[int] = Field(description="one example: H, W (grayscale), H, W, C (colour) or F (encoded row)")
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


routes = FastAPI(responses=schema.fastapi_responses())  # the GET endpoints and /predict_npy (BentoML's are POST)
# BentoML's internals this service replaces, all in patches.py, in request order (metrics labels, admission, JSON
# parsing, batching wait, /docs.json); checked first, so a BentoML upgrade that changed one fails here by name.
patches.install(lambda: metric_labels.paths_of(routes))
quiet_client_errors()  # a client's mistake is one log line, not a traceback


@bentoml.service(name=args.service_name, workers=args.workers, threads=args.threads,
                 traffic={"timeout": 30, "max_concurrency": args.max_concurrent_requests}, metrics={"enabled": True}, logging={"access": {"enabled": args.access_log}},
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
        # a text model exported with a dynamic sequence length reads each request's rows cut after their last token
        self.text = text_layout(META["encoding"], IMAGE_SHAPE[0]) if KIND == "table" and takes_any_length(
            self.session) else None
        self.about = Metadata(
            registered_model=META.get("registered_model", ""), model_version=str(META.get("model_version", "")),
            variant=META.get("variant", ""), bento_model=str(self.model_ref.tag), kind=KIND,
            problem=META.get("problem", ""), classes=CLASSES, input_shape=list(IMAGE_SHAPE), pixel_max=PIXEL_MAX, metrics=META.get("metrics", {}),
            lineage=META.get("lineage", {}), compressed_model=META.get("compressed_model", {}),
            expectations=EXPECTED or {})
        for name in ("predict", "predict_rows", "predict_text", "predict_image"):
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
        """Classify a batch of images: N×H×W (N×H×W×C for a colour model) raw intensities in [0, pixel_max], the
        shape and scale /metadata gives (8×8 and 0–16 for the bundled digits).

        Concurrent requests are batched together (adaptive batching); each gets its own images' answers."""
        return _answers(await self._infer(images))

    @bentoml.api
    async def predict_rows(self, rows: Annotated[list[dict], Field(min_length=1, json_schema_extra=ROWS_SCHEMA)],
                           ) -> Predictions:
        """Classify raw table rows ({column: value}, null for unknown) for a model trained on a table: encoded
        with the imputation, scaling and one-hot encoding `prepare` fitted on the training split."""
        if args.inline_inference and len(rows) <= INLINE_ROWS:
            return self._answer_rows(rows)
        return await asyncio.to_thread(self._answer_rows, rows)

    def _answer_rows(self, rows: list[dict]) -> Predictions:
        if KIND != "table":
            raise InvalidArgument("this model takes images (POST /predict), not table rows")
        if len(rows) > args.max_images_per_request:
            raise InvalidArgument(f"{len(rows)} rows in one request; the limit is {args.max_images_per_request}")
        _check_text_lengths(rows)
        try:
            features = encode_rows(rows, META["encoding"])
        except BadRow as err:
            raise InvalidArgument(str(err)) from err
        SEEN.observe(features)
        return _answers(self._probabilities(trimmed(features, self.text)))

    @bentoml.api
    async def predict_text(self, texts: Texts) -> Predictions:
        """Classify free texts (support tickets, reviews, messages) for a model trained on one text column: each
        tokenized with the tokenizer `prepare` learnt from the training texts, its first tokens read (the model's
        maximum length). A model that also reads other columns takes its rows at /predict_rows."""
        if not TEXT_ALONE:  # the guard answers 404 first; this holds without it too (Service.to_asgi in a test)
            raise InvalidArgument(f"this model takes table rows with the columns {[*OTHER_COLUMNS, *TEXT]}: POST "
                                  "/predict_rows")
        return await self.predict_rows([{TEXT[0]: text} for text in texts])

    @bentoml.api
    def predict_image(self, image: Annotated[Path, ContentType("image/*")]) -> OnePrediction:
        """Classify one uploaded PNG or JPEG: converted to the model's channels (grayscale or RGB) and resized to its
        H×W with the same code as training's image folders, its 0–255 intensities scaled to [0, pixel_max]."""
        if KIND != "images":
            raise InvalidArgument("this model takes table rows, not images")
        try:
            pixels = decode_image(image.read_bytes(), IMAGE_SHAPE[:2], CHANNELS, args.max_image_pixels) * (PIXEL_MAX / 255.0)
        except NotAnImage as err:
            raise InvalidArgument(f"image: {err}") from err
        SEEN.observe(pixels[None])
        return _answers(self._probabilities(pixels[None]))[0]

    @routes.get("/metadata")
    def metadata(self) -> Metadata:
        """Which model this is: registry name and version, compression variant, its test metrics and lineage;
        and the skew this worker has seen: inputs checked, and violations per check."""
        return self.about.model_copy(update={"skew": SEEN.summary()})

    @routes.post("/predict_npy", response_class=Response, openapi_extra=NPY_BODY,
                 responses={200: {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}}},
                            400: {"description": "the body is not a usable .npy array", "model": schema.Refusal}})
    async def predict_npy(self, request: Request) -> Response:
        """Classify a batch sent as a .npy file (the body; N×H×W[×C] raw intensities, or N×F encoded rows, any real
        dtype): answered with a .npy file of N×K float32 probabilities, column k the class /metadata lists k-th. The same checks and model as /predict,
        without JSON: for clients that send many images at a time. No pickled object arrays are read."""
        from fastapi.responses import JSONResponse

        try:
            images = checked_images(np.ascontiguousarray(read_npy(await request.body()), dtype=np.float32))
        except ValueError as err:
            return JSONResponse({"error": f"body: {err}"}, status_code=400)
        probabilities = await self._infer(images)
        out = io.BytesIO()
        np.save(out, np.asarray(probabilities, dtype=np.float32), allow_pickle=False)
        return Response(out.getvalue(), media_type=NPY)

    @routes.get("/recent_inputs")
    def recent_inputs(self) -> RecentInputs:
        """The last inputs this worker answered (at most `recent_inputs` of them): what `mlops drift`
        compares with the training data. Operators only: send `X-Operator-Key` (BENTO_OPERATOR_KEY where the
        service runs); 403 without it, and always when the service has none."""
        kept = SEEN.latest()
        return RecentInputs(kind=KIND, count=len(kept), inputs=kept)


DigitsClassifier.add_asgi_middleware(Guard, max_bytes=int(args.max_request_mb * 1024 * 1024))
