"""The error guard in front of every endpoint (ASGI middleware): the API key, the request size limit, malformed
multipart bodies and uploads that are not files, and one JSON shape for every 4xx answer."""

from __future__ import annotations

import hmac
import json
import logging
import os

from bento.service.admission import busy, replay
from bento.service.build import IMAGE_SHAPE, KIND, TEXT_ALONE, args, body_limit
from bento.service.monitoring import WARM_UP

API_KEY_ENV = "BENTO_API_KEY"
OPERATOR_KEY_ENV = "BENTO_OPERATOR_KEY"  # opens what only an operator may read: other clients' inputs
OPERATOR_PATHS = ("/recent_inputs",)
WARM_UP_TOKEN_ENV = "BENTO_WARM_UP_TOKEN"  # set by the serving front for the Bentos it starts (bento/front)
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json", "/schema.json", "/")
OPEN_PREFIXES = ("/static_content/", "/assets/")  # the docs UIs' own files: the UI must load to ask for the key
UPLOADS = {"/predict_image": "image"}  # endpoint → its file field: only multipart uploads, never a URL to fetch
# What each endpoint's body may be. Anything else is 415: a form or text/plain body is what a cross-site page can
# POST without asking, and it would feed the drift statistics (or, with BentoML's own parsing, fetch a URL).
BODY_TYPES = {"/predict": ("application/json",), "/predict_rows": ("application/json",),
              "/predict_text": ("application/json",),
              "/predict_npy": ("application/x-npy", "application/octet-stream"),
              "/predict_image": ("multipart/form-data",)}

# The endpoint for the other kind of model: not served by this one (404), not in its schema
OTHER_KIND = {"images": ("/predict_rows", "/predict_text"),
              "table": ("/predict_image",) if TEXT_ALONE else ("/predict_image", "/predict_text")}.get(KIND, ())
WHAT_IT_TAKES = {"images": "images (POST /predict, /predict_image)",
                 "table": "texts (POST /predict_text, /predict_rows)" if TEXT_ALONE else
                 "table rows (POST /predict_rows, /predict)"}.get(KIND, "")


class Guard:
    """ASGI middleware: the API key when BENTO_API_KEY is set (401), the operator key BENTO_OPERATOR_KEY for
    /recent_inputs (403; off without one), the request size limit (413), a multipart
    body without a boundary (400, where BentoML's parser would answer 500), and one shape for every error answer:
    a JSON object whose `error` names the problem (BentoML answers a validation error with a generic `error` and
    the reasons in `detail`, and its InvalidArgument with a one-element list)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.key = os.environ.get(API_KEY_ENV, "").encode()
        self.operator_key = os.environ.get(OPERATOR_KEY_ENV, "").encode()
        self.warm_up_token = os.environ.get(WARM_UP_TOKEN_ENV, "").encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        send = _plain_errors(send)
        headers = dict(scope["headers"])
        if self.warm_up_token and hmac.compare_digest(headers.get(b"x-warm-up", b""), self.warm_up_token):
            # Only the front that started this process knows the token: a client cannot hide its inputs from
            # drift monitoring by calling itself a warm-up. This request's context only (a task per request).
            WARM_UP.set(True)
        if scope["path"] in OPERATOR_PATHS and scope["method"] in ("GET", "HEAD"):  # the client key does not open
            # it: every client's inputs are there (another method is refused by the router: 405)
            return await self._operator_only(scope, receive, send, headers.get(b"x-operator-key", b""))
        if self.key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.key):
            return await _reply(send, 401, f"missing or wrong API key: send the header X-API-Key "
                                            f"(the value of {API_KEY_ENV} where the service runs)")
        if scope["path"] in OTHER_KIND:
            return await _reply(send, 404, f"{scope['path']} is not served: this model takes "
                                            f"{WHAT_IT_TAKES}")
        kind = headers.get(b"content-type", b"").lower()
        media_type = kind.split(b";")[0].strip().decode("latin-1")
        accepted = BODY_TYPES.get(scope["path"])
        if accepted and scope["method"] == "POST" and media_type not in accepted:
            field = f" with the image file in the form field '{UPLOADS[scope['path']]}'" if scope["path"] in UPLOADS else ""
            return await _reply(send, 415, f"{scope['path']} takes a body of type {' or '.join(accepted)}{field}; "
                                            f"got {media_type or 'no Content-Type'}")
        if media_type.startswith("multipart/") and b"boundary=" not in kind:
            return await _reply(send, 400, "a multipart/form-data request needs a boundary in its Content-Type")
        declared = headers.get(b"content-length")
        limit = min(body_limit(scope["path"]), self.max_bytes)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _reply(send, 413, _too_large(scope["path"], f"request body of {int(declared)} bytes", limit))
        if media_type.startswith("multipart/"):
            # Parsed here first, bounded by the size limit: BentoML answers a malformed body with 500, and fetches a
            # URL sent as text where a file was expected.
            body = await _body(receive, self.max_bytes)
            if body is None:
                return await _reply(send, 413, f"request body above the limit of {self.max_bytes} bytes")
            problem = await _multipart_problem(scope, body, UPLOADS.get(scope["path"]))
            if problem:
                return await _reply(send, 400, problem)
            return await self.app(scope, replay(body), send)
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body has no declared length: read it up to the limit, then hand it on.
            messages, size = [], 0
            while True:
                message = await receive()
                messages.append(message)
                size += len(message.get("body", b""))
                if size > limit:
                    return await _reply(send, 413, _too_large(scope["path"], "request body", limit))
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            replayed = iter(messages)

            async def receive_replayed():
                return next(replayed, None) or await receive()

            return await self.app(scope, receive_replayed, send)
        return await self.app(scope, receive, send)


    async def _operator_only(self, scope, receive, send, key: bytes) -> None:
        if not self.operator_key:
            return await _reply(send, 403, f"{scope['path']} is off: it shows what clients sent. Set "
                                           f"{OPERATOR_KEY_ENV} where the service runs and send that value as "
                                           "X-Operator-Key")
        if not hmac.compare_digest(key, self.operator_key):
            return await _reply(send, 403, f"missing or wrong X-Operator-Key: {scope['path']} needs the value of "
                                           f"{OPERATOR_KEY_ENV} where the service runs (a client's X-API-Key does "
                                           "not open it)")
        return await self.app(scope, receive, send)


def _too_large(path: str, what: str, limit: int) -> str:
    if path == "/predict":
        return (f"{what} above the limit of {limit} bytes for /predict (JSON for {args.max_images_per_request} inputs "
                f"of shape {IMAGE_SHAPE}): send fewer per request, or bulk data as .npy to /predict_npy")
    return f"{what} above the limit of {limit} bytes ({args.max_request_mb:g} MB): send fewer inputs per request"


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


async def _multipart_problem(scope, body: bytes, upload_field: str | None) -> str:
    """What is wrong with a multipart body (unparseable; for an upload endpoint, no file in its field), or ""."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    try:
        form = await Request(scope, replay(body)).form(max_files=4, max_fields=16)
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
        if message["type"] == "http.response.start" and message["status"] == 503:  # BentoML's batcher shed it
            held["shed"] = True
            return await busy(send)
        if held.get("shed"):
            return
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
        del found["detail"]  # the reasons are in `error`; the schema documents `detail` as a string
    return json.dumps(found).encode()


async def _reply(send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _OneLine(logging.Filter):
    """BentoML logs every request its endpoint refused with the full traceback at ERROR (about 1.9 KB per bad
    request). A client's mistake (4xx) becomes one INFO line and a request shed for overload one WARNING line,
    naming the endpoint and the reason; a server error keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _client_status(error)
        if status is None:
            return True
        method_path = " ".join(str(a) for a in reversed(record.args or ()))  # "Exception on %s [%s]": path, method
        reason = _reason(error)
        record.msg, record.args, record.exc_info, record.exc_text = f"{status} {method_path}: {reason}", (), None, None
        record.levelno, record.levelname = (logging.WARNING, "WARNING") if status == 503 else (logging.INFO, "INFO")
        return True


def _client_status(error) -> int | None:
    """The status BentoML answers `error` with when it is not a server error (4xx, or 503 overload; 499 for a client
    gone mid-body), else None."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    if isinstance(error, ClientDisconnect):
        return 499  # nginx's "client closed request": nobody is left to answer
    if isinstance(error, ValidationError):
        return 400
    if isinstance(error, BentoMLException):
        status = int(error.error_code)
        return status if 400 <= status < 500 or status == 503 else None
    return None


def _reason(error) -> str:
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    if isinstance(error, ClientDisconnect):
        return "the client disconnected before its whole body arrived"
    if isinstance(error, ValidationError):
        found = error.errors(include_url=False, include_input=False)
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in found[:3])
        return text + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
    return (str(error).splitlines() or [type(error).__name__])[0][:300]


def quiet_client_errors() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(_OneLine())
