"""The project's own Prefect server, so that schedules fire on one machine with no setup.

With `PREFECT_API_URL` unset, Prefect talks to a temporary server started with `PREFECT__SERVER_EPHEMERAL=1`,
and an ephemeral server runs no scheduler: a served cron deployment registers and then never runs.
`project_server(root)` instead starts a real `prefect server start` (scheduler, late-run marking, UI) on
127.0.0.1, with its database in `<root>/.prefect/` (ignored by git), so deployments, schedules and run
history survive a restart of the serving process. A server of this project that is already running (its
address is in `.prefect/server.json`) is reused and left running; one started here is stopped on exit. While it
runs, `mlops run`, `score` and `sweep` track their flows on it too (`use_running`); otherwise the first of them
starts it, kept running between commands until none has used it for PIPELINE_SERVER_IDLE_MINUTES (30;
flows/kept_server.py), or, with that set to 0, each starts a server of its own in the background as it begins
(`for_command`), instead of Prefect's temporary server at the flow's first call.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flows import prefect_database
from tasks.common import stage_host
from tasks.common.errors import ConfigError, PipelineError
from tasks.common.stage_host import stop_with_parent

STATE_DIR = ".prefect"  # the server's PREFECT_HOME: prefect.db, server.log, server.json
# What a command run by hand imports, imported once by the warm host the project's server keeps (`project_server`)
COMMAND_PRELOAD = ("prefect", "prefect.flow_engine", "prefect.task_engine", "flows.score", "jobs.score",
                   "jobs.score.model", "bentoml.models", "dvc.repo", "mlflow.tracing.processor.base_mlflow")
DEFAULT_PORT = 4200  # Prefect's own default, so the UI is where Prefect's documentation says
IDLE_ENV = "PIPELINE_SERVER_IDLE_MINUTES"  # how long a server a command started is kept after its last use
DEFAULT_IDLE_MINUTES = 30.0
USERS_LOCK = "users.lock"  # shared-locked by every process using the project's server (flows/kept_server.py)
_using: list[int] = []  # this process's shared locks on a project's server: held until it exits


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
def project_server(root: Path, port: int = DEFAULT_PORT, timeout_s: float = 120,
                   warm_host: bool = True) -> Iterator[Server]:
    """The project's Prefect server: the one already running for `root` (in use while the block runs), else a new
    one, stopped on exit. `warm_host`: with a warm host for the commands typed meanwhile (`command_host`)."""
    home = root.resolve() / STATE_DIR
    home.mkdir(exist_ok=True)
    record = home / "server.json"
    users = _use(home)
    running = _recorded(record, root)
    if running:
        try:
            yield running
        finally:
            os.close(users)
        return
    os.close(users)
    if port_taken(port):
        raise ServerUnavailable(f"127.0.0.1:{port} is taken by another program; pass --port to use another one")
    api_url = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    prefect_database.seed(home)  # a new project's: migrated at install, not now
    log_path = home / "server.log"
    with log_path.open("ab") as log:
        # Its own session: a Ctrl-C meant for the serving process does not kill the server under a running flow;
        # it is stopped after the runner has shut down (finally below).
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=stop_with_parent)
    try:
        with contextlib.ExitStack() as stack:
            host = {}
            if warm_host:  # started before the wait: it imports while the server boots
                host = stack.enter_context(_command_host(root))
            _wait_until_healthy(proc, api_url, timeout_s, log_path)
            _write_record(record, {"pid": proc.pid, "api_url": api_url, "root": str(root.resolve()),
                                   "python": sys.executable, **host})
            yield Server(api_url, started_here=True)
    finally:
        record.unlink(missing_ok=True)
        _stop(proc)


@contextmanager
def start_command_host(root: Path) -> Iterator[None]:
    """A warm host for the commands run by hand while the project's server runs (`command_host`), added to the
    running server's record."""
    with _command_host(root) as host:
        _write_record(root.resolve() / STATE_DIR / "server.json", host)
        yield


@contextmanager
def _command_host(root: Path) -> Iterator[dict]:
    """The warm host `command_host` finds, as the fields of the server's record. Started with this process's
    environment before it points at the server: a command typed in a shell like it matches it."""
    with stage_host.started(root, COMMAND_PRELOAD, ("PREFECT_",)) as host:
        yield {"host": host[stage_host.HOST_ENV], "code_at": time.time()}


def _write_record(record: Path, fields: dict) -> None:
    """Add `fields` to the server's record, written whole by rename: a reader never sees half of it."""
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError):
        found = {}
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({**found, **fields}))
    os.replace(tmp, record)


def _use(home: Path) -> int:
    """A shared lock on the project's server, for as long as the returned descriptor is open: a kept server is
    not stopped while a process holds it (flows/kept_server.py). Waits while a keeper is stopping the server."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(fd)  # its last use, for a keeper that checks between two short commands
    return fd


def use_running(root: Path) -> str | None:
    """With PREFECT_API_URL unset, point this process's flows at the project's own server when one is running (as
    `mlops schedule` keeps it): no temporary server is started for the run (its start and stop cost about 4 s of
    every command). Call it before Prefect is imported (its settings are read then). Returns the API URL used."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    api_url = _attach(root)
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    return api_url


def _attach(root: Path) -> str | None:
    """The API URL of the project's running server, in use by this process until it exits; None if none runs."""
    home = root.resolve() / STATE_DIR
    record = home / "server.json"
    if not record.is_file():
        return None
    users = _use(home)
    running = _recorded(record, root)
    if running is None:
        os.close(users)
        return None
    _using.append(users)
    return running.api_url


def idle_minutes() -> float:
    """PIPELINE_SERVER_IDLE_MINUTES: how long a project server a command started is kept after its last use."""
    import math

    raw = os.environ.get(IDLE_ENV, "").strip()
    try:
        minutes = float(raw) if raw else DEFAULT_IDLE_MINUTES
    except ValueError:
        minutes = -1.0
    if not math.isfinite(minutes) or minutes < 0:
        raise ConfigError(f"{IDLE_ENV}={raw!r}: a number of minutes (0: no server kept, each command starts its own)")
    return minutes


CODE = ("cli", "flows", "jobs", "tasks")  # the project's code a warm host imported


def command_host(root: Path) -> str | None:
    """The socket of the warm host the project's running server keeps for commands run by hand (`project_server`):
    Prefect, MLflow, DVC, BentoML and the jobs imported once; None when no server of this project runs, when it
    was started by another Python, or when the project's code changed since (the host holds the code as it was)."""
    root = root.resolve()
    try:
        found = json.loads((root / STATE_DIR / "server.json").read_text())
    except (OSError, ValueError):
        return None
    address = found.get("host")
    if not address or found.get("python") != sys.executable or not Path(address).exists():
        return None
    changed = any(path.stat().st_mtime > found.get("code_at", 0) for folder in CODE
                  for path in (root / folder).rglob("*.py"))
    return None if changed else address


class CommandServer:
    """The Prefect server one command's flow runs are tracked on (`for_command`): `origin` is "user"
    (PREFECT_API_URL as set), "project" (the project's running server), "kept" (the project's, started now by its
    keeper: flows/kept_server.py) or "command" (this command's own, booting in the background)."""

    def __init__(self, origin: str, api_url: str, proc: subprocess.Popen | None = None,
                 log_path: Path | None = None, root: Path | None = None) -> None:
        self.origin, self.api_url, self.proc, self.log_path, self.root = origin, api_url, proc, log_path, root

    @contextmanager
    def ready(self, timeout_s: float = 150) -> Iterator[None]:
        """Wait until it answers (at once for a server that was already running); the block runs the flow.

        Flow run heartbeats are off for the block, but on the user's own server (PREFECT_API_URL): Prefect's
        heartbeat thread sleeps in 1 s steps that the end of every flow run waits for (0.65 s of a 64-image `mlops
        score`, measured), and nothing here reads them: the command's own server runs no services, and on the
        project's server a crashed run is only marked by an automation a team adds (Prefect's zombie-flow
        detection); an interactive command's run is watched by whoever typed it. Scheduled runs (`mlops
        schedule`'s deployments) do not pass here and keep Prefect's heartbeats."""
        if self.origin == "kept":
            self.api_url = _kept_ready(self.root, self.proc, timeout_s)
            os.environ["PREFECT_API_URL"] = self.api_url  # (another keeper's server, started first, may be elsewhere)
        elif self.proc is not None:
            _wait_until_healthy(self.proc, self.api_url, timeout_s, self.log_path)
        if self.origin == "user":
            yield
            return
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        # the API URL too: in a command forked from the warm host (`command_host`), Prefect was imported before
        # for_command set PREFECT_API_URL
        with temporary_settings(updates={PREFECT_API_URL: self.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@contextmanager
def for_command(root: Path) -> Iterator[CommandServer]:
    """Where this command's flow runs are tracked, set in PREFECT_API_URL before Prefect is imported: as the user
    set it; else the project's own server while one runs (`mlops schedule`, or kept from an earlier command); else
    the project's server started now by a keeper that keeps it until no command has used it for
    PIPELINE_SERVER_IDLE_MINUTES (flows/kept_server.py); with that 0, a server for this command alone. Either is
    started now, so that it boots while the command imports and checks, where Prefect would start its temporary
    server at the flow's first call and wait for it (3 to 4 s of every command). The command's own is Prefect's
    `prefect server start` without UI or services, on the same database (PREFECT_HOME) as that temporary server,
    stopped when the process exits. Run the flow inside `ready()`."""
    if os.environ.get("PREFECT_API_URL"):
        yield CommandServer("user", os.environ["PREFECT_API_URL"])
        return
    running = use_running(root)
    if running:
        yield CommandServer("project", running)
        return
    minutes = idle_minutes()
    if minutes > 0:
        yield _keeper(root, minutes)
        return
    from bento.front.supervisor import free_port

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    folder = Path(tempfile.mkdtemp(prefix="prefect-server-"))
    prefect_database.seed(Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser())  # Prefect's default home
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port), "--no-ui", "--no-services"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=stop_with_parent)
    # Stopped when this process exits, not when the block ends: Prefect sends its last logs and events to the
    # server from its own exit handlers (registered later, so run earlier), and would wait on a stopped one.
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    atexit.register(_let_stop, proc)
    os.environ["PREFECT_API_URL"] = api_url
    yield CommandServer("command", api_url, proc, log_path)


def _keeper(root: Path, minutes: float) -> CommandServer:
    """Start the project's server in a keeper of its own session, which outlives this command
    (flows/kept_server.py), on Prefect's default port when it is free."""
    from bento.front.supervisor import free_port

    home = root.resolve() / STATE_DIR
    home.mkdir(exist_ok=True)
    # In use from before the keeper starts: it sees this command using the server from its first look, and starts
    # its warm host once the command is done, not while the command's stages import the same libraries (its
    # first look came before the command attached, and a cold run shared 2 cores with that host's imports).
    _using.append(_use(home))
    port = free_port() if port_taken(DEFAULT_PORT) else DEFAULT_PORT
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    with (home / "keeper.log").open("ab") as log:
        keeper = subprocess.Popen([sys.executable, "-m", "flows.kept_server", str(root.resolve()), str(port),
                                   str(minutes)], cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = api_url
    return CommandServer("kept", api_url, keeper, home / "server.log", root)


def _kept_ready(root: Path, keeper: subprocess.Popen, timeout_s: float) -> str:
    """The API URL of the project's server once it answers, in use by this process until it exits: the one
    `keeper` starts, or the one another keeper started first (`keeper` then exits 0 at once)."""
    home = root.resolve() / STATE_DIR
    deadline = time.monotonic() + timeout_s
    while (api_url := _attach(root)) is None:
        code = keeper.poll()
        if code or time.monotonic() > deadline:
            why = f"its keeper exited with code {code}" if code else f"it did not answer within {timeout_s:.0f} s"
            raise ServerUnavailable(f"the project's Prefect server did not start ({why}); its logs: "
                                    f"{home / 'keeper.log'}, {home / 'server.log'}\n{_tail(home / 'keeper.log')}")
        time.sleep(0.1)
    return api_url


def is_healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def running_server(root: Path) -> Server | None:
    """The project's server, when one runs and answers (its record: `.prefect/server.json`)."""
    return _recorded(root.resolve() / STATE_DIR / "server.json", root)


def _recorded(record: Path, root: Path) -> Server | None:
    """The server a still-running process of this project started, if it answers (not one a copy of the project
    recorded: the record names its project's root)."""
    try:
        found = json.loads(record.read_text())
        api_url = found["api_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if found.get("root", str(root.resolve())) != str(root.resolve()):
        return None
    return Server(api_url, started_here=False) if is_healthy(api_url) else None


def port_taken(port: int) -> bool:
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
        time.sleep(0.1)


def _let_stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, without waiting for it to finish shutting down (it needs no one)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


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
