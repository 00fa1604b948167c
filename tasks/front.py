"""The serving front door: one public port in front of a `bentoml serve` process, replaced without downtime.

`python -m tasks.front serve` starts the champion's Bento on a private loopback port and forwards every HTTP
request that reaches the public port (3000) to it. A roll-out (`python -m tasks.front rollout TAG`, or the
pipeline after it promotes a new champion) starts the new Bento on another private port, waits until it
answers `/readyz`, warms it up with a few requests, sends every new request to it, lets the old one finish the requests it holds, then stops it.
Requests are forwarded one at a time, so a client's keep-alive connection to the front outlives the switch.
A Bento that fails to start or to become ready is stopped and the old one keeps serving.

The admin endpoints (`GET /status`, `POST /rollout`) listen on their own port, on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("front")

# Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1), plus the ones
# aiohttp recomputes.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}


class BackendFailed(Exception):
    """A Bento could not be started or did not become ready; the message says why."""


@dataclass
class Backend:
    """One `bentoml serve` process on a private loopback port."""

    tag: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    started_at: float = field(default_factory=time.time)
    inflight: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _startup_failure(path: Path) -> str:
    """The exception that stopped the service's start-up, from its log; empty while there is none."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    marker = next((i for i, line in enumerate(lines) if "Application startup failed" in line), None)
    if marker is None:
        return ""
    # the exception line: the last one before the marker that is neither indented nor a log record
    raised = [line for line in lines[:marker] if line and not line[0].isspace() and not line[:4].isdigit()]
    return (raised[-1] if raised else "Application startup failed")[:500]


async def start_backend(tag: str, log_dir: Path, ready_timeout_s: float, session) -> Backend:
    """Start `bentoml serve TAG` on a free loopback port and wait until `/readyz` answers 200."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = log_dir / f"{tag.replace(':', '-')}-{port}.log"
    with open(log_path, "ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port),
            stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True)  # its own group: stopped whole
    backend = Backend(tag, port, process, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if process.returncode is not None:
            raise BackendFailed(f"bentoml serve {tag} exited with code {process.returncode} before it was ready; "
                                f"last lines of {log_path}:\n{_tail(log_path)}")
        if failure := _startup_failure(log_path):  # BentoML restarts a failing worker forever: do not wait for it
            await stop_backend(backend)
            raise BackendFailed(f"bentoml serve {tag}: its service failed to start ({failure}); see {log_path}")
        with contextlib.suppress(Exception):
            async with session.get(f"{backend.url}/readyz", timeout=_timeout(2)) as answer:
                if answer.status == 200:
                    await _warm_up(backend, session)
                    log.info("%s ready on port %d in %.1f s", tag, port, time.time() - backend.started_at)
                    return backend
        if time.monotonic() > deadline:
            await stop_backend(backend)
            raise BackendFailed(f"bentoml serve {tag} was not ready within {ready_timeout_s:g} s; "
                                f"last lines of {log_path}:\n{_tail(log_path)}")
        await asyncio.sleep(0.2)


async def _warm_up(backend: Backend, session, requests: int = 16) -> None:
    """Send /predict a few inputs of zeros, one at a time, before any user request reaches the backend.

    BentoML's adaptive batcher times its first calls to learn how long a batch takes; until it has, it may
    shed concurrent requests with 503. These calls do that learning instead of the first users' requests.
    """
    async with session.get(f"{backend.url}/metadata", timeout=_timeout(10)) as answer:
        shape = (await answer.json())["input_shape"]
    zeros = [[0.0] * shape[-1]] if len(shape) == 1 else [[[0.0] * shape[1]] * shape[0]]
    for _ in range(requests):
        async with session.post(f"{backend.url}/predict", json={"images": zeros}, timeout=_timeout(10),
                                headers={"X-Warm-Up": "1"}) as answer:  # not counted as users' inputs
            if answer.status != 200:
                await stop_backend(backend)
                raise BackendFailed(f"{backend.tag} answered a warm-up /predict with {answer.status}: "
                                    f"{(await answer.text())[:300]}")


async def stop_backend(backend: Backend, grace_s: float = 30) -> None:
    """SIGTERM to the whole process group (BentoML finishes what it holds), SIGKILL after `grace_s`."""
    if backend.process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(backend.process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(backend.process.wait(), grace_s)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(backend.process.pid, signal.SIGKILL)
        await backend.process.wait()


def _timeout(seconds: float):
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


class Front:
    """Forwards requests to the current backend; `rollout` replaces it. One roll-out at a time."""

    def __init__(self, log_dir: Path, ready_timeout_s: float, drain_timeout_s: float, request_timeout_s: float = 60):
        self.log_dir = log_dir
        self.ready_timeout_s = ready_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.request_timeout_s = request_timeout_s
        self.backend: Backend | None = None
        self.history: list[dict] = []
        self._rolling = asyncio.Lock()
        self.session = None

    async def open(self) -> None:
        import aiohttp

        # auto_decompress off: bodies pass through byte for byte, with their own Content-Encoding.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def close(self) -> None:
        if self.backend is not None:
            await stop_backend(self.backend)
        if self.session is not None:
            await self.session.close()

    async def forward(self, request):
        """Any method, any path: sent to the backend current when the request arrived."""
        import aiohttp
        from aiohttp import web

        backend = self.backend
        if backend is None:
            return web.json_response({"error": "no service is running behind this front yet"}, status=503)
        backend.inflight += 1
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP - {"content-length"}}
            async with self.session.request(
                    request.method, backend.url + request.rel_url.path_qs, headers=headers,
                    data=request.content if request.body_exists else None, allow_redirects=False,
                    timeout=_timeout(self.request_timeout_s)) as answer:
                body = await answer.read()
                out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                out["X-Bento-Tag"] = backend.tag
                return web.Response(status=answer.status, body=body, headers=out)
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            return web.json_response({"error": f"the service behind this front did not answer: {err!r}"}, status=502)
        finally:
            backend.inflight -= 1

    async def rollout(self, tag: str, ready_timeout_s: float | None = None) -> dict:
        """Start `tag`, wait until it is ready, switch, drain and stop the old one. Raises BackendFailed."""
        async with self._rolling:
            old = self.backend
            began = time.monotonic()
            new = await start_backend(tag, self.log_dir, ready_timeout_s or self.ready_timeout_s, self.session)
            ready_s = time.monotonic() - began
            self.backend = new  # the switch: each request from here on goes to the new process
            drained = await self._drain(old) if old is not None else True
            if old is not None:
                await stop_backend(old)
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from": old.tag if old else None, "to": tag,
                      "ready_seconds": round(ready_s, 2), "drained": drained,
                      "seconds": round(time.monotonic() - began, 2)}
            self.history.append(record)
            log.info("rolled out %s (was %s): ready in %.1f s", tag, record["from"], ready_s)
            return record

    async def _drain(self, old: Backend) -> bool:
        """Wait for the old backend's in-flight requests; False if some were still running at the timeout."""
        deadline = time.monotonic() + self.drain_timeout_s
        while old.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return old.inflight == 0

    def status(self) -> dict:
        backend = self.backend
        return {"bento": backend.tag if backend else None, "backend_port": backend.port if backend else None,
                "backend_pid": backend.process.pid if backend else None,
                "serving_since": backend.started_at if backend else None,
                "inflight": backend.inflight if backend else 0, "history": self.history}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.front", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve a Bento behind the front door")
    run.add_argument("--bento", help="Bento tag to start with (default: the Bento of the registry's champion)")
    run.add_argument("--host", default="127.0.0.1", help="public address (default 127.0.0.1; 0.0.0.0 for all)")
    run.add_argument("--port", type=int, default=3000)
    run.add_argument("--admin-port", type=int, default=3001, help="admin endpoints, on loopback (default 3001)")
    run.add_argument("--root", type=Path, default=Path.cwd(), help="project root: params.yaml, logs in .serving/")
    roll = commands.add_parser("rollout", help="replace the running Bento with another, without downtime")
    roll.add_argument("bento", nargs="?", help="Bento tag, e.g. digits_classifier:abc123 (default: the Bento of "
                      "the registry's champion, e.g. after `python -m tasks.registry rollback`)")
    roll.add_argument("--root", type=Path, default=Path.cwd(), help="project root, to find the champion's Bento")
    roll.add_argument("--admin", default="http://127.0.0.1:3001")
    roll.add_argument("--ready-timeout", type=float, help="seconds the new Bento gets to become ready "
                      "(default: the front's, rollout.ready_timeout_seconds)")
    show = commands.add_parser("status", help="what is served, since when, and the roll-outs so far")
    show.add_argument("--admin", default="http://127.0.0.1:3001")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "rollout":
        from tasks.config import load_params
        from tasks.errors import PipelineError

        try:
            tag = args.bento or champion_bento(args.root.resolve(), load_params(args.root / "params.yaml"))
            print(json.dumps(request_rollout(args.admin, tag, args.ready_timeout), indent=2))
        except (BackendFailed, PipelineError) as err:
            print(f"roll-out failed: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "status":
        try:
            print(json.dumps(serving_status(args.admin), indent=2))
        except BackendFailed as err:
            print(f"front: {err}", file=sys.stderr)
            return 1
        return 0
    from tasks.config import load_params
    from tasks.errors import PipelineError

    root = args.root.resolve()
    try:
        params = load_params(root / "params.yaml")
        tag = args.bento or champion_bento(root, params)
        asyncio.run(serve(tag, args.host, args.port, args.admin_port, root / ".serving",
                          params.rollout.ready_timeout_seconds, params.rollout.drain_timeout_seconds))
    except (PipelineError, BackendFailed) as err:
        print(f"front: {err}", file=sys.stderr)
        return 1
    return 0


def champion_bento(root: Path, params) -> str:
    """The newest Bento built for the registry's current `champion` version."""
    import bentoml

    from tasks import registry, tracking
    from tasks.errors import PromotionError

    tracking.use_store(root)
    champion = registry.champion_version(params.evaluate.registered_model)
    if champion is None:
        raise PromotionError(f"{params.evaluate.registered_model} has no champion yet: run the pipeline (make run)")
    built = [b for b in bentoml.bentos.list(params.package.service_name)
             if b.info.labels.get("model_version") == champion]
    if not built:
        raise PromotionError(f"no Bento was built for champion version {champion}; run the pipeline "
                             "(make run) or pass --bento")
    return str(max(built, key=lambda b: b.info.creation_time).tag)


if __name__ == "__main__":
    sys.exit(main())
