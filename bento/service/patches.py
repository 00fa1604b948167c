"""Every change this service makes to BentoML's internals, in one place, in the order a request meets them.

BentoML's public API carries what it can: the endpoints (`@bentoml.api`, `@bentoml.asgi_app`), the limits
(`traffic=`), and the guard (API key, body size, plain 4xx errors: guard.py), added with `add_asgi_middleware`.
What it cannot, BentoML 1.4 offers no hook for, so its own objects are replaced here, by name, before the server
builds its app (the service module imports this first thing). A request passes them in this order:

 0. `uvicorn.config.HTTP_PROTOCOLS` (the HTTP server under BentoML; its connection, before any middleware) →
    `connections.BoundedConnections`: uvicorn times nothing until a connection's first answer, so a client that
    never ends its headers held the connection for ever (6,000 of them, all still open after 20 s), and one address
    could open any number; here headers must arrive within `header_timeout_seconds` (408) and one address holds
    at most `max_connections_per_client` connections (503).
 1. `bentoml._internal.server.http.instruments.RunnerTrafficMetricsMiddleware` (the outermost middleware) →
    `metric_labels.bounded_labels(...)`: its endpoint label is the raw path, so every path a client invents became
    a Prometheus series (20,000 random paths: /metrics timed out, a worker grew to about 2 GB).
 2. `bentoml._internal.server.http.traffic.MaxConcurrencyMiddleware` → `admission.Admission`: BentoML answers 429
    beyond `max_concurrency` and knows nothing of request sizes; this answers 503 + Retry-After, and also refuses
    a body that would take the bytes in progress past `max_inflight_mb`, before reading it.
 3. (the guard, public API: `add_asgi_middleware`)
 4. `_bentoml_impl.serde.ALL_SERDE["application/json"]` → `admission.CooperativeJSON`: BentoML parses a JSON body
    in one go on the event loop (one 8 MB /predict body held every other request about half a second); this reads
    a large {"images": [...]} image by image, handing the loop back every 2 ms.
 5. `bentoml._internal.marshal.dispatcher.Optimizer` → `build.CappedWait` (when `max_batch_wait_ms` is set): the
    batcher's learned wait feeds itself after a burst (a lone request kept waiting about 10 ms for minutes); capped.
 6. For `/docs.json` only: `_bentoml_sdk.service.openapi._get_api_routes` and `.error_responses`, and
    `bentoml._internal.service.openapi.specification.OpenAPISpecification.asdict` → schema.py: the schema lists
    every refusal (401, 413, 415, 503), marks bodies required, leaves out the other kind's endpoint and, with an
    API key, declares it.

`check()` verifies, before anything is replaced, that each of these still exists with what the replacement relies
on; a BentoML (or uvicorn) upgrade that renames or reshapes one fails with `BentoMLChanged` naming it, at
`bentoml serve` and in
tests/unit/test_bentoml_patches.py, instead of serving with a limit or a label silently gone.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


class BentoMLChanged(RuntimeError):
    """An internal of BentoML that this service replaces is gone or changed shape."""


@dataclass(frozen=True)
class Internal:
    module: str
    name: str
    uses: tuple[str, ...] = ()  # attributes of it, or names in its source, that the replacement relies on
    why: str = ""

    @property
    def where(self) -> str:
        return f"{self.module}.{self.name}"


INTERNALS = (
    Internal("uvicorn.config", "HTTP_PROTOCOLS", ("auto", "httptools"),
             "header timeouts and connections per client (connections.py)"),
    Internal("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol",
             ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete",
              "self.transport", "self.loop", "self.client"),
             "header timeouts and connections per client (connections.py)"),
    Internal("bentoml._internal.server.http.instruments", "RunnerTrafficMetricsMiddleware", ("__init__", "__call__"),
             "request metrics labelled by a bounded set of paths (metric_labels.py)"),
    Internal("bentoml._internal.server.http.traffic", "MaxConcurrencyMiddleware",
             ("__init__", "__call__", "self._semaphore", "self.skip_paths", "self.app"),
             "503 + Retry-After and a budget of bytes in progress (admission.py)"),
    Internal("_bentoml_impl.serde", "ALL_SERDE", ("application/json",), "large JSON bodies parsed off the event loop"),
    Internal("_bentoml_impl.serde", "JSONSerde", ("parse_request", "deserialize_model"), "its parsing kept for the rest"),
    Internal("_bentoml_impl.serde", "Payload", (), "how a body is handed to BentoML's parser"),
    Internal("bentoml._internal.marshal.dispatcher", "Optimizer", ("trigger_refresh", "self.wait"),
             "the batcher's wait capped at max_batch_wait_ms (build.py)"),
    Internal("_bentoml_sdk.service.openapi", "_get_api_routes", (), "every refusal in /docs.json (schema.py)"),
    Internal("_bentoml_sdk.service.openapi", "error_responses", (), "every refusal in /docs.json (schema.py)"),
    Internal("_bentoml_sdk.service.openapi", "REF_TEMPLATE", (), "the error body's schema reference (schema.py)"),
    Internal("bentoml._internal.service.openapi.specification", "OpenAPISpecification", ("asdict",),
             "the API key's security scheme in /docs.json (schema.py)"),
)


def check(internals: tuple[Internal, ...] = INTERNALS) -> None:
    """Every internal replaced below still exists, with what its replacement relies on; else BentoMLChanged."""
    from importlib.metadata import version

    for internal in internals:
        problem = _problem(internal)
        if problem:
            raise BentoMLChanged(f"BentoML {version('bentoml')}: {internal.where} {problem}; bento/service/patches.py "
                                 f"replaces it for {internal.why or 'the service'}: read the new BentoML's source "
                                 "and adapt the replacement (or drop it if BentoML now does this itself)")


def _problem(internal: Internal) -> str:
    try:
        module = importlib.import_module(internal.module)
    except ImportError:
        return "cannot be imported (the module is gone)"
    if not hasattr(module, internal.name):
        return "is gone"
    target = getattr(module, internal.name)
    for used in internal.uses:
        if isinstance(target, dict):
            if used not in target:
                return f"has no entry {used!r}"
        elif used.startswith("self."):
            if used not in _source(target):
                return f"no longer sets or reads {used}"
        elif not hasattr(target, used):
            return f"has no attribute {used!r}"
    return ""


def _source(target) -> str:
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        return ""


def install(service_paths) -> None:
    """Replace each internal, in request order (the docstring above); `service_paths()`: the paths the service's own
    routes serve, for the metrics labels."""
    check()
    from _bentoml_impl import serde
    from bentoml._internal.marshal import dispatcher
    from bentoml._internal.server.http import instruments, traffic

    from uvicorn import config as uvicorn_config

    from bento.service import admission, metric_labels, schema
    from bento.service.build import CappedWait, args

    # read by uvicorn.Config.load(), which the worker runs after importing the service
    uvicorn_config.HTTP_PROTOCOLS["auto"] = uvicorn_config.HTTP_PROTOCOLS["httptools"] = \
        "bento.service.connections:BoundedConnections"
    instruments.RunnerTrafficMetricsMiddleware = metric_labels.bounded_labels(
        instruments.RunnerTrafficMetricsMiddleware, service_paths)
    traffic.MaxConcurrencyMiddleware = admission.Admission
    serde.ALL_SERDE["application/json"] = admission.CooperativeJSON
    if args.max_batch_wait_ms is not None:
        dispatcher.Optimizer = CappedWait  # read by CorkDispatcher.__init__, which runs after this
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import OpenAPISpecification

    openapi.error_responses.update(schema.refusal_responses())
    openapi._get_api_routes = schema.routes_of_this_model(openapi._get_api_routes)
    if schema.key_required():
        OpenAPISpecification.asdict = schema.with_security(OpenAPISpecification.asdict)
