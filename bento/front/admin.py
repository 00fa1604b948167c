"""The front's admin side (`GET /status`, `POST /rollout` on loopback), the server that runs both sides, and the
client calls a pipeline run or `mlops rollout | status` make to it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bento.front.proxy import Front
from bento.front.supervisor import BackendFailed


def _admin_app(front: Front):
    from aiohttp import web

    async def status(_request):
        return web.json_response(front.status())

    async def rollout(request):
        try:
            body = await request.json()
            tag, timeout = body["bento"], body.get("ready_timeout_seconds")
            if not isinstance(tag, str) or not tag or not (timeout is None or float(timeout) > 0):
                raise ValueError
        except Exception:  # noqa: BLE001 - any malformed body gets the same answer
            return web.json_response({"error": 'expected a JSON body {"bento": "<name:version>"} '
                                               '(and optionally "ready_timeout_seconds": a positive number)'}, status=400)
        try:
            return web.json_response(await front.rollout(tag, timeout and float(timeout)))
        except BackendFailed as err:
            return web.json_response({"error": str(err), "serving": front.backend.tag if front.backend else None},
                                     status=502)

    app = web.Application()
    app.add_routes([web.get("/status", status), web.post("/rollout", rollout)])
    return app


async def serve(tag: str, host: str, port: int, admin_port: int, log_dir: Path, ready_timeout_s: float,
                drain_timeout_s: float) -> None:
    """Start `tag`, then answer on `host:port` (traffic) and 127.0.0.1:`admin_port` until SIGTERM or SIGINT."""
    from aiohttp import web

    front = Front(log_dir, ready_timeout_s, drain_timeout_s)
    await front.open()
    runners = []
    try:
        await front.rollout(tag)
        public = web.Application(client_max_size=0)
        public.router.add_route("*", "/{path:.*}", front.forward)
        for app, bind_host, bind_port in ((public, host, port), (_admin_app(front), "127.0.0.1", admin_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, bind_host, bind_port).start()
            runners.append(runner)
        print(f"serving {tag} on http://{host}:{port} (admin on http://127.0.0.1:{admin_port})", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await front.close()


def request_rollout(admin_url: str, tag: str, ready_timeout_s: float | None = None) -> dict:
    """Ask a running front to roll out `tag`; raises BackendFailed with the front's reason."""
    import httpx

    body = {"bento": tag} if ready_timeout_s is None else {"bento": tag, "ready_timeout_seconds": ready_timeout_s}
    try:
        answer = httpx.post(f"{admin_url.rstrip('/')}/rollout", json=body, timeout=(ready_timeout_s or 600) + 120)
    except httpx.HTTPError as err:
        raise BackendFailed(f"the serving front at {admin_url} did not answer: {err!r}") from err
    body = answer.json()
    if answer.status_code != 200:
        raise BackendFailed(f"roll-out of {tag} refused by {admin_url}: {body.get('error')}; "
                            f"still serving {body.get('serving')}")
    return body


def serving_status(admin_url: str) -> dict:
    """The running front's status; raises BackendFailed when nothing answers there."""
    import httpx

    try:
        answer = httpx.get(f"{admin_url.rstrip('/')}/status", timeout=10)
        answer.raise_for_status()
        return answer.json()
    except (httpx.HTTPError, ValueError) as err:
        raise BackendFailed(f"no serving front answered at {admin_url}: {err!r}") from err
