"""The public side of the front: every request forwarded to the current back-end, which a roll-out replaces."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from bento.front.supervisor import Backend, client_timeout, start_backend, stop_backend

log = logging.getLogger("front")

# Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1), plus the ones
# aiohttp recomputes.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}
# Never taken from a client: the front's own warm-up marker (a client sending it is counted like any other).
_FRONT_ONLY = {"x-warm-up"}


def end_to_end(headers, dropped: set[str]):
    """The headers to pass on: repeated ones kept apart (two Set-Cookie stay two), without the hop-by-hop ones,
    those the message's own Connection header names among them (RFC 9110 §7.6.1)."""
    from multidict import CIMultiDict

    named = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped | named)


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
        from yarl import URL

        backend.inflight += 1
        try:
            # the path exactly as the client sent it: decoded and normalised here, `/livez/%2e%2e/recent_inputs`
            # would reach the back-end as `/recent_inputs`, past whatever the front decided on the raw path
            target = URL(backend.url + request.raw_path, encoded=True)
            async with self.session.request(
                    request.method, target,
                    headers=end_to_end(request.headers, _HOP_BY_HOP - {"content-length"} | _FRONT_ONLY),
                    data=request.content if request.body_exists else None, allow_redirects=False,
                    timeout=client_timeout(self.request_timeout_s)) as answer:
                body = await answer.read()
                out = end_to_end(answer.headers, _HOP_BY_HOP)
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
            if old is not None and old.tag == tag:
                # Asked for what it serves already: a roll-out asked twice (its first asker killed before the answer)
                # switches once.
                return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from": tag, "to": tag, "ready_seconds": 0.0,
                        "drained": True, "seconds": 0.0, "already_serving": True}
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
