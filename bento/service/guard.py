"""The error guard in front of every endpoint (ASGI middleware): the API key, the request size limit, malformed
multipart bodies and uploads that are not files, and one JSON shape for every 4xx answer."""

from __future__ import annotations

import hmac
import json
import os

from bento.service.build import args
from bento.service.monitoring import WARM_UP

API_KEY_ENV = "BENTO_API_KEY"
WARM_UP_TOKEN_ENV = "BENTO_WARM_UP_TOKEN"  # set by the serving front for the Bentos it starts (bento/front)
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json", "/")
UPLOADS = {"/predict_image": "image"}  # endpoint → its file field: only multipart uploads, never a URL to fetch


class Guard:
    """ASGI middleware: the API key when BENTO_API_KEY is set (401), the request size limit (413), a multipart
    body without a boundary (400, where BentoML's parser would answer 500), and one shape for every error answer:
    a JSON object whose `error` names the problem (BentoML answers a validation error with a generic `error` and
    the reasons in `detail`, and its InvalidArgument with a one-element list)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.key = os.environ.get(API_KEY_ENV, "").encode()
        self.warm_up_token = os.environ.get(WARM_UP_TOKEN_ENV, "").encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        send = _plain_errors(send)
        headers = dict(scope["headers"])
        if self.warm_up_token and hmac.compare_digest(headers.get(b"x-warm-up", b""), self.warm_up_token):
            # Only the front that started this process knows the token: a client cannot hide its inputs from
            # drift monitoring by calling itself a warm-up. This request's context only (a task per request).
            WARM_UP.set(True)
        if self.key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.key):
            return await _reply(send, 401, f"missing or wrong API key: send the header X-API-Key "
                                            f"(the value of {API_KEY_ENV} where the service runs)")
        kind = headers.get(b"content-type", b"").lower()
        upload_field = UPLOADS.get(scope["path"])
        if upload_field and scope["method"] == "POST" and not kind.startswith(b"multipart/form-data"):
            # BentoML would fetch a URL sent as the body: the service never downloads what a client points at
            return await _reply(send, 415, f"{scope['path']} takes multipart/form-data with the image file in the form "
                                            f"field '{upload_field}'")
        if kind.startswith(b"multipart/") and b"boundary=" not in kind:
            return await _reply(send, 400, "a multipart/form-data request needs a boundary in its Content-Type")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _reply(send, 413, f"request body of {int(declared)} bytes; the limit is {self.max_bytes} "
                                            f"({args.max_request_mb:g} MB): send fewer images per request")
        if kind.startswith(b"multipart/"):
            # Parsed here first, bounded by the size limit: BentoML answers a malformed body with 500, and fetches a
            # URL sent as text where a file was expected.
            body = await _body(receive, self.max_bytes)
            if body is None:
                return await _reply(send, 413, f"request body above the limit of {self.max_bytes} bytes")
            problem = await _multipart_problem(scope, body, upload_field)
            if problem:
                return await _reply(send, 400, problem)
            return await self.app(scope, _replay(body), send)
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


async def _body(receive, limit: int) -> bytes | None:
    """The whole request body, or None past `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _multipart_problem(scope, body: bytes, upload_field: str | None) -> str:
    """What is wrong with a multipart body (unparseable; for an upload endpoint, no file in its field), or ""."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    try:
        form = await Request(scope, _replay(body)).form(max_files=4, max_fields=16)
    except Exception as err:  # noqa: BLE001 - python-multipart and Starlette raise several kinds for a broken body
        return f"malformed multipart/form-data body: {str(err) or type(err).__name__}"
    try:
        if upload_field is None:
            return ""
        values = form.getlist(upload_field)
        if not values:
            return f"expected the image file in the form field '{upload_field}'; found fields {sorted(form.keys())}"
        if not all(isinstance(v, UploadFile) for v in values):
            return f"the form field '{upload_field}' must be a file upload, not text (URLs are not fetched)"
        return ""
    finally:
        await form.close()


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
