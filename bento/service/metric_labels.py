"""Bounded Prometheus labels: BentoML labels its request metrics with the raw request path, so every distinct path a
client invents (404s and 401s included) became a series of its own. 20,000 random paths made /metrics time out and
grew a worker from 458 MB to about 2 GB. Here every path the service does not serve is counted under one label,
`unmatched`; the request itself is routed on its real path (and answered 404 as before)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bentoml._internal.context import server_context

UNMATCHED = "unmatched"
SYSTEM_PATHS = {"/", "/livez", "/healthz", "/readyz", "/metrics", "/docs", "/docs.json", "/schema.json"}
SYSTEM_PREFIXES = ("/assets/", "/static_content/")  # the docs UI's files
_ORIGINAL = "bounded_labels.path"


def bounded_labels(base: type, service_paths: Callable[[], Iterable[str]]) -> type:
    """BentoML's traffic-metrics middleware `base` (built when the server builds its app), with its endpoint label
    the path for `service_paths()`, BentoML's API routes and its system routes, and `unmatched` for anything else
    (installed by patches.py)."""

    class BoundedLabels(base):
        def __init__(self, app, **options) -> None:
            super().__init__(_RealPath(app), **options)
            self.known: set[str] | None = None

        async def __call__(self, scope, receive, send) -> None:
            if self.known is None:  # the API routes are known once the server has loaded the service
                self.known = SYSTEM_PATHS | set(server_context.service_routes) | set(service_paths())
            path = scope.get("path", "")
            if scope["type"] == "http" and path not in self.known and not path.startswith(SYSTEM_PREFIXES):
                scope = {**scope, "path": UNMATCHED, _ORIGINAL: path}
            await super().__call__(scope, receive, send)

    return BoundedLabels


def paths_of(app) -> list[str]:
    """The paths a Starlette/FastAPI app routes, its included routers' too."""
    found, stack = [], list(getattr(app, "routes", []))
    while stack:
        route = stack.pop()
        if isinstance(getattr(route, "path", None), str):
            found.append(route.path)
        for holder in (route, getattr(route, "router", None), getattr(route, "original_router", None)):  # mounts, includes
            stack.extend(getattr(holder, "routes", None) or [])
    return found


class _RealPath:
    """Inside the metrics middleware: the request goes on with its own path."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if _ORIGINAL in scope:
            scope = {key: value for key, value in scope.items() if key != _ORIGINAL} | {"path": scope[_ORIGINAL]}
        await self.app(scope, receive, send)
