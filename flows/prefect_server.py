"""The project's own Prefect server, so that schedules fire on one machine with no setup.

With `PREFECT_API_URL` unset, Prefect talks to a temporary server started with `PREFECT__SERVER_EPHEMERAL=1`,
and an ephemeral server runs no scheduler: a served cron deployment registers and then never runs.
`project_server(root)` instead starts a real `prefect server start` (scheduler, late-run marking, UI) on
127.0.0.1, with its database in `<root>/.prefect/` (ignored by git), so deployments, schedules and run
history survive a restart of the serving process. A server of this project that is already running (its
address is in `.prefect/server.json`) is reused and left running; one started here is stopped on exit. While it
runs, `mlops run`, `score` and `sweep` track their flows on it too (`use_running`) instead of starting Prefect's
temporary server each time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.common.errors import PipelineError

STATE_DIR = ".prefect"  # the server's PREFECT_HOME: prefect.db, server.log, server.json
DEFAULT_PORT = 4200  # Prefect's own default, so the UI is where Prefect's documentation says


class ServerUnavailable(PipelineError):
    """The project's Prefect server could not be started or reached."""

    exit_code = 2


@dataclass(frozen=True)
class Server:
    api_url: str  # what PREFECT_API_URL is set to for the runs
    started_here: bool

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


@contextmanager
def project_server(root: Path, port: int = DEFAULT_PORT, timeout_s: float = 120) -> Iterator[Server]:
    """The project's Prefect server: the one already running for `root`, else a new one, stopped on exit."""
    home = root.resolve() / STATE_DIR
    home.mkdir(exist_ok=True)
    record = home / "server.json"
    running = _recorded(record)
    if running:
        yield running
        return
    if _port_taken(port):
        raise ServerUnavailable(f"127.0.0.1:{port} is taken by another program; pass --port to use another one")
    api_url = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log_path = home / "server.log"
    with log_path.open("ab") as log:
        # Its own session: a Ctrl-C meant for the serving process does not kill the server under a running flow;
        # it is stopped after the runner has shut down (finally below).
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_stop_with_parent)
    try:
        _wait_until_healthy(proc, api_url, timeout_s, log_path)
        record.write_text(json.dumps({"pid": proc.pid, "api_url": api_url}))
        yield Server(api_url, started_here=True)
    finally:
        record.unlink(missing_ok=True)
        _stop(proc)


def use_running(root: Path) -> str | None:
    """With PREFECT_API_URL unset, point this process's flows at the project's own server when one is running (as
    `mlops schedule` keeps it): no temporary server is started for the run (its start and stop cost about 4 s of
    every command). Call it before Prefect is imported (its settings are read then). Returns the API URL used."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    record = root.resolve() / STATE_DIR / "server.json"
    running = _recorded(record) if record.is_file() else None
    if running is None:
        return None
    os.environ["PREFECT_API_URL"] = running.api_url
    return running.api_url


def is_healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _recorded(record: Path) -> Server | None:
    """The server a still-running process of this project started, if it answers."""
    try:
        api_url = json.loads(record.read_text())["api_url"]
    except (OSError, ValueError, KeyError):
        return None
    return Server(api_url, started_here=False) if is_healthy(api_url) else None


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_until_healthy(proc: subprocess.Popen, api_url: str, timeout_s: float, log_path: Path) -> None:
    # A fresh database is migrated first: 10-20 s on 2 cores.
    deadline = time.monotonic() + timeout_s
    while not is_healthy(api_url):
        if proc.poll() is not None:
            raise ServerUnavailable(f"the Prefect server exited with code {proc.returncode} before it answered; "
                                    f"its log: {log_path}\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            _stop(proc)
            raise ServerUnavailable(f"the Prefect server did not answer {api_url}/health within {timeout_s:.0f} s; "
                                    f"its log: {log_path}\n{_tail(log_path)}")
        time.sleep(0.5)


def _stop_with_parent() -> None:
    """In the server's process, before it starts: SIGTERM it when the process that started it dies, however it
    dies (a SIGKILL leaves no `finally` to run), so no orphaned server keeps the port and the database. Linux only;
    elsewhere a killed `serve` leaves the server running, and the next `serve` reuses it."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (uvicorn and its services), SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
