"""The front's admin side (`GET /status`, `POST /rollout` on loopback), the server that runs both sides, and the
client calls a pipeline run or `mlops rollout | status` make to it."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import re
import secrets
import signal
from pathlib import Path

from bento.front.proxy import Front
from bento.front.supervisor import BackendFailed


ADMIN_TOKEN_ENV = "FRONT_ADMIN_TOKEN"
# The admin token goes to loopback only, or to the hosts this variable lists (comma-separated), set by whoever runs
# the pipeline: rollout.admin_url is a param any run's overrides can set, so it must not be able to send the token away.
ADMIN_HOSTS_ENV = "FRONT_ADMIN_HOSTS"
TOKEN_FILE = "admin-token"  # in the front's log folder (<root>/.serving), readable by its owner only
# A Bento tag as BentoML writes one (name, optionally :version): never a path, an option or a URL.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(:[A-Za-z0-9_.-]{1,128})?")


def admin_token(serving_dir: Path) -> str:
    """The admin token a client sends: FRONT_ADMIN_TOKEN, else the one the running front wrote; "" if neither."""
    if os.environ.get(ADMIN_TOKEN_ENV):
        return os.environ[ADMIN_TOKEN_ENV]
    path = serving_dir / TOKEN_FILE
    return path.read_text().strip() if path.is_file() else ""


def _new_admin_token(serving_dir: Path) -> str:
    """FRONT_ADMIN_TOKEN, or a random token written (mode 600) where this project's clients find it."""
    token = os.environ.get(ADMIN_TOKEN_ENV) or secrets.token_urlsafe(32)
    serving_dir.mkdir(parents=True, exist_ok=True)
    path = serving_dir / TOKEN_FILE
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(token)
    return token


def _admin_app(front: Front, token: str):
    """GET /status and POST /rollout, each needing `Authorization: Bearer <token>`; GET /healthz is open."""
    from aiohttp import web

    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authorized(request, handler):
        if request.path == "/healthz":
            return await handler(request)
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return web.json_response({"error": "missing or wrong admin token: send Authorization: Bearer <token> "
                                               f"(${ADMIN_TOKEN_ENV}, or .serving/{TOKEN_FILE} of the front)"},
                                     status=401)
        return await handler(request)

    async def healthz(_request):
        return web.json_response({"ok": True})

    async def status(_request):
        return web.json_response(front.status())

    async def rollout(request):
        if request.content_type != "application/json":  # no cross-site "simple" POST (text/plain, forms)
            return web.json_response({"error": "the body must be JSON (Content-Type: application/json)"}, status=415)
        try:
            body = await request.json()
            tag, timeout = body["bento"], body.get("ready_timeout_seconds")
            if not isinstance(tag, str) or not _TAG.fullmatch(tag) or not (timeout is None or float(timeout) > 0):
                raise ValueError
        except Exception:  # noqa: BLE001 - any malformed body gets the same answer
            return web.json_response({"error": 'expected a JSON body {"bento": "<name:version>"} '
                                               '(and optionally "ready_timeout_seconds": a positive number)'}, status=400)
        if not await asyncio.to_thread(_stored, tag):
            return web.json_response({"error": f"no Bento {tag!r} in this machine's BentoML store",
                                      "serving": front.backend.tag if front.backend else None}, status=400)
        try:
            return web.json_response(await front.rollout(tag, timeout and float(timeout)))
        except BackendFailed as err:
            return web.json_response({"error": str(err), "serving": front.backend.tag if front.backend else None},
                                     status=502)

    app = web.Application(middlewares=[authorized])
    app.add_routes([web.get("/healthz", healthz), web.get("/status", status), web.post("/rollout", rollout)])
    return app


def _stored(tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        bentoml.bentos.get(tag)
    except BentoMLException:  # NotFound, or a tag BentoML cannot parse
        return False
    return True


async def serve(tag: str, host: str, port: int, admin_port: int, log_dir: Path, ready_timeout_s: float,
                drain_timeout_s: float) -> None:
    """Start `tag`, then answer on `host:port` (traffic) and 127.0.0.1:`admin_port` until SIGTERM or SIGINT."""
    from aiohttp import web

    token = _new_admin_token(log_dir)
    front = Front(log_dir, ready_timeout_s, drain_timeout_s)
    await front.open()
    runners = []
    try:
        await front.rollout(tag)
        public = web.Application(client_max_size=0)
        public.router.add_route("*", "/{path:.*}", front.forward)
        for app, bind_host, bind_port in ((public, host, port), (_admin_app(front, token), "127.0.0.1", admin_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, bind_host, bind_port).start()
            runners.append(runner)
        # the token itself is never printed: logs are read (and kept) by more people than may roll out models
        print(f"serving {tag} on http://{host}:{port} (admin on http://127.0.0.1:{admin_port}: send "
              f"Authorization: Bearer <the token in {log_dir / TOKEN_FILE}>)", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await front.close()


def request_rollout(admin_url: str, tag: str, token: str, ready_timeout_s: float | None = None) -> dict:
    """Ask a running front to roll out `tag`; raises BackendFailed with the front's reason."""
    import httpx

    body = {"bento": tag} if ready_timeout_s is None else {"bento": tag, "ready_timeout_seconds": ready_timeout_s}
    try:
        answer = httpx.post(f"{admin_url.rstrip('/')}/rollout", json=body, timeout=(ready_timeout_s or 600) + 120,
                            headers=_bearer(token, admin_url))
    except httpx.HTTPError as err:
        raise BackendFailed(f"the serving front at {admin_url} did not answer: {err!r}") from err
    body = answer.json()
    if answer.status_code != 200:
        raise BackendFailed(f"roll-out of {tag} refused by {admin_url}: {body.get('error')}; "
                            f"still serving {body.get('serving')}")
    return body


def serving_status(admin_url: str, token: str) -> dict:
    """The running front's status; raises BackendFailed when nothing answers there."""
    import httpx

    try:
        answer = httpx.get(f"{admin_url.rstrip('/')}/status", timeout=10, headers=_bearer(token, admin_url))
        answer.raise_for_status()
        return answer.json()
    except (httpx.HTTPError, ValueError) as err:
        raise BackendFailed(f"no serving front answered at {admin_url}: {err!r}") from err


def _bearer(token: str, admin_url: str) -> dict:
    """The admin request's credentials; none without a token (the front then answers 401, saying what to send).
    AdminAddressRefused before anything is sent when `admin_url` is not loopback or a host FRONT_ADMIN_HOSTS lists."""
    if token:
        check_admin_url(admin_url)
    return {"Authorization": f"Bearer {token}"} if token else {}


class AdminAddressRefused(BackendFailed):
    """An admin address the token may not be sent to."""


def check_admin_url(admin_url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(admin_url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError as err:
        raise AdminAddressRefused(f"rollout.admin_url {admin_url!r} is not a URL: {err}") from err
    allowed = {h.strip().lower() for h in os.environ.get(ADMIN_HOSTS_ENV, "").split(",") if h.strip()}
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        raise AdminAddressRefused(f"rollout.admin_url {admin_url!r}: only http(s)://host:port, without credentials")
    if not (_loopback(host) or host in allowed):
        raise AdminAddressRefused(
            f"rollout.admin_url {admin_url!r} is not a loopback address: the front's admin token is sent only to "
            f"loopback or to a host listed in {ADMIN_HOSTS_ENV} where the pipeline runs "
            f"(now: {sorted(allowed) or 'none'})")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
