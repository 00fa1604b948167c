"""Start, warm up and stop `bentoml serve` processes on private loopback ports: the front's back-ends, and
the promote stage's serving check (tasks/promote/readiness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bento.front import own_metrics

log = logging.getLogger("front")
WARM_UP_TOKEN_ENV = "BENTO_WARM_UP_TOKEN"  # what bento/service/guard.py reads (tests/unit/test_structure.py: the same)


class BackendFailed(Exception):
    """A Bento could not be started or did not become ready; the message says why."""


@dataclass
class Backend:
    """One `bentoml serve` process on a private loopback port."""

    tag: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    warm_up_token: str = ""  # the value of X-Warm-Up this process treats as the front's own warm-up
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
    log_path = log_dir / f"bento-{port}-{int(time.time())}.log"  # named by the port: no path from request data
    token = secrets.token_urlsafe(24)  # marks this front's warm-up requests; the service trusts no other
    with open(log_path, "ab") as out:
        process = await asyncio.create_subprocess_exec(
            *own_metrics.command(tag, "127.0.0.1", port),  # its own Prometheus folder: no other Bento's counters wiped
            env={**os.environ, WARM_UP_TOKEN_ENV: token},
            stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True)  # its own group: stopped whole
    backend = Backend(tag, port, process, log_path, warm_up_token=token)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if process.returncode is not None:
            raise BackendFailed(f"bentoml serve {tag} exited with code {process.returncode} before it was ready; "
                                f"last lines of {log_path}:\n{_tail(log_path)}")
        if failure := _startup_failure(log_path):  # BentoML restarts a failing worker forever: do not wait for it
            await stop_backend(backend)
            raise BackendFailed(f"bentoml serve {tag}: its service failed to start ({failure}); see {log_path}")
        with contextlib.suppress(Exception):
            async with session.get(f"{backend.url}/readyz", timeout=client_timeout(2)) as answer:
                if answer.status == 200:
                    await _warm_up(backend, session)
                    log.info("%s ready on port %d in %.1f s", tag, port, time.time() - backend.started_at)
                    return backend
        if time.monotonic() > deadline:
            await stop_backend(backend)
            raise BackendFailed(f"bentoml serve {tag} was not ready within {ready_timeout_s:g} s; "
                                f"last lines of {log_path}:\n{_tail(log_path)}")
        await asyncio.sleep(0.2)


def _zeros(shape: list[int]):
    """Nested lists of zeros of `shape` (no NumPy in the front)."""
    return [_zeros(shape[1:]) for _ in range(shape[0])] if shape else 0.0


async def _warm_up(backend: Backend, session, requests: int = 16) -> None:
    """Send /predict a few inputs of zeros, one at a time, before any user request reaches the backend.

    BentoML's adaptive batcher times its first calls to learn how long a batch takes; until it has, it may
    shed concurrent requests with 503. These calls do that learning instead of the first users' requests.
    """
    async with session.get(f"{backend.url}/metadata", timeout=client_timeout(10)) as answer:
        shape = (await answer.json())["input_shape"]
    zeros = [_zeros(shape)]  # one example of the served shape: H×W, H×W×C or F
    for _ in range(requests):
        async with session.post(f"{backend.url}/predict", json={"images": zeros}, timeout=client_timeout(10),
                                headers={"X-Warm-Up": backend.warm_up_token}) as answer:  # not users' inputs
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


def client_timeout(seconds: float):
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)
