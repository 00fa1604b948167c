"""Overload: work the service cannot take refused at arrival, and a large body read in turns with the requests beside it.

- Admission: BentoML's own concurrency limit (`traffic.max_concurrency`, here `max_concurrent_requests`) refuses a
  request beyond it before its body is read, with 429 "Too many requests". Here it answers 503 with a `Retry-After`
  and a JSON error saying the service is busy: the client did nothing wrong, the service is full. The same for a
  request whose body would take the bytes in progress past `max_inflight_mb`. Before, overload was shed only after
  the body was parsed (by the batcher, past `max_latency_ms`), and goodput collapsed under many large requests.
- Large /predict bodies are parsed image by image, handing the event loop back every 2 ms: BentoML parses a body in
  one go on the event loop, where one 8 MB body held every other request for about half a second.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
from _bentoml_impl import serde
from bentoml._internal.server.http import traffic
from bentoml.exceptions import InvalidArgument
from pydantic import ValidationError

from bento.service.build import IMAGE_SHAPE, args, body_limit
from bento.service.checks import ONE_INPUT, checked_images, refused

RETRY_AFTER_S = 1
BUSY = "the service is busy: it holds as many requests as it can take; retry after {} s"
PARSE_INLINE_BYTES = 128 * 1024  # a smaller JSON body is parsed in one go (a few milliseconds at most)
YIELD_EVERY_S = 0.002  # a large one hands the event loop back this often
# A request with a body counts for at least this much from its arrival (so that a thousand arriving at once cannot
# all be let in), then for the bytes it has sent: a declared size reserves no more than this.
RESERVED_BYTES = 64 * 1024


class Admission(traffic.MaxConcurrencyMiddleware):
    """BentoML's limit on requests in progress, answering 503 + Retry-After (BentoML's answers 429); and a budget of
    request body bytes in progress, counted as they arrive: beyond it, a request with a body is answered 503 at
    arrival too (a 1024-image request is a thousand times the work of one image). A declared Content-Length reserves
    nothing (an upload that declares 8 MB and sends nothing held the whole budget until BentoML's 30 s timeout), a
    body that stalls `body_timeout_seconds` between two parts is answered 408 and dropped, and requests without a
    body (health, /metadata, /metrics) never wait on the budget. One request is always let in, however large, so
    that no size within the limits is starved."""

    def __init__(self, app, max_concurrency: int, skip_paths=None) -> None:
        super().__init__(app, max_concurrency, skip_paths)
        self.budget, self.in_progress = int(args.max_inflight_mb * 2**20), 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            return await self.app(scope, receive, send)
        size = _declared_size(scope)
        if size > body_limit(scope["path"]):  # the guard refuses it (413) without reading it
            return await self.app(scope, receive, send)
        if self._semaphore.locked() or (size and self.in_progress and self.in_progress + size > self.budget):
            return await busy(send)
        if not size:
            return await super().__call__(scope, receive, send)
        held = [min(size, RESERVED_BYTES)]  # what this request counts for now: a window, then the bytes it sent
        self.in_progress += held[0]
        try:
            async with self._semaphore:  # a place from arrival: its body is read holding it (for at most the timeout)
                body = await self._read(receive, held, body_limit(scope["path"]))
                if body is None:
                    return await _answer(send, 408, f"the request body stalled for {args.body_timeout_seconds:g} s: "
                                                    "send it without pauses")
                if body is not _GONE:
                    await self.app(scope, replay(body), send)
        finally:
            self.in_progress -= held[0]

    async def _read(self, receive, held: list[int], limit: int):
        """The body, counted against the budget as it arrives (at least its reserved window); None when it stalls,
        _GONE when the client left. Past `limit` it stops reading: the guard refuses what it was handed (413)."""
        parts, received = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), args.body_timeout_seconds)
            except TimeoutError:
                return None
            if message["type"] != "http.request":
                return _GONE
            parts.append(message.get("body", b""))
            received += len(parts[-1])
            grown = max(received, held[0]) - held[0]
            held[0] += grown
            self.in_progress += grown
            if not message.get("more_body") or received > limit:
                return b"".join(parts)


_GONE = object()  # the client disconnected before its body was whole


def replay(body: bytes):
    """A receive that hands on a body read already, then says the client is gone (the guard uses it too)."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _answer(send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _declared_size(scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    if scope["method"] in ("POST", "PUT", "PATCH"):
        return body_limit(scope["path"])  # chunked: as large as it may be
    return 0


async def busy(send) -> None:
    """The answer to a request the service has no room for; its body is never read."""
    body = json.dumps({"error": BUSY.format(RETRY_AFTER_S)}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})


class CooperativeJSON(serde.JSONSerde):
    """BentoML's JSON parsing, except for a large /predict body of the usual form {"images": [...]}: read image by
    image, each checked against the served input's type, handing the event loop back every couple of milliseconds.
    (A worker thread would not help: pydantic and the json module hold the GIL for the whole body.) Any other body
    is parsed by BentoML as before; its size is bounded by the guard's per-endpoint JSON limit."""

    async def parse_request(self, request, cls):
        body = await request.body()
        if request.url.path == "/predict" and len(body) >= PARSE_INLINE_BYTES:
            images = await _images_of(body)
            if images is not None:
                return cls.model_construct(images=images)
        return self.deserialize_model(serde.Payload((body,), metadata=request.headers), cls)


_SPACE = re.compile(r"[ \t\n\r]*")
_IMAGES_KEY = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"images"[ \t\n\r]*:[ \t\n\r]*\[')
_DECODER = json.JSONDecoder()


async def _images_of(body: bytes) -> np.ndarray | None:
    """The checked images of a body {"images": [image, ...]}, or None when it is not of that form. Every image is
    validated as /predict's schema says (InvalidArgument naming it otherwise), then the batch is checked as
    any request's (shape, count, finite values, range: checks.py)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    found = _IMAGES_KEY.match(text)
    if not found:
        return None
    position, images, yield_at = found.end(), [], time.perf_counter() + YIELD_EVERY_S
    position = _SPACE.match(text, position).end()
    while not text.startswith("]", position):
        try:
            value, position = _DECODER.raw_decode(text, position)
        except RecursionError:  # thousands of nested brackets: no image is that deep, and no parser should recurse
            raise InvalidArgument(f"images: image {len(images)} is nested too deeply to be an image "
                                  f"(an image is {len(IMAGE_SHAPE)} levels of lists)") from None
        except ValueError:
            return None  # broken JSON: BentoML's parser names the problem
        images.append(_one_input(value, len(images)))
        if len(images) > args.max_images_per_request:
            raise InvalidArgument(f"images: more than {args.max_images_per_request} images in one request; the limit is "
                                  f"{args.max_images_per_request}")
        position = _SPACE.match(text, position).end()
        if text.startswith(",", position):
            position = _SPACE.match(text, position + 1).end()
        elif not text.startswith("]", position):
            return None
        if time.perf_counter() > yield_at:
            await asyncio.sleep(0)  # let other requests run
            yield_at = time.perf_counter() + YIELD_EVERY_S
    if text[position + 1:].strip() != "}":
        return None  # other keys: BentoML's parser
    if not images:
        raise InvalidArgument("images: images is an empty batch: send at least one image")
    try:
        return checked_images(np.stack(images))
    except ValueError as err:
        raise InvalidArgument(f"images: {err}") from None


def _one_input(value, index: int) -> np.ndarray:
    try:
        array = np.asarray(ONE_INPUT.validate_python(value), dtype=np.float32)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        if first["type"] == "list_type":
            refused("shape", "")
        where = ".".join(map(str, ("images", index, *first["loc"])))
        raise InvalidArgument(f"{where}: {first['msg']}") from None
    if array.shape != IMAGE_SHAPE:
        expected = ", ".join(map(str, IMAGE_SHAPE))
        message = f"images must have shape (N, {expected}); got image {index} of shape {array.shape}"
        raise InvalidArgument(f"images: {refused('shape', message)}")
    return array
