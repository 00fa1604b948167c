"""The real servers tests talk to, started as a team starts them, on free loopback ports: `bentoml serve`,
`mlflow server`, PostgreSQL, `prefect server start`, and a `dask scheduler` with its workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bento.front import own_metrics
from flows import prefect_database
from tests.support.processes import REPO, free_port, stop, wait_until_healthy


def bento_env(home: Path) -> dict:
    """The environment of a process using the BentoML store at `home`, with `bentoml` on PATH and no API or
    operator key."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("BENTO_API_KEY", None)
    env.pop("BENTO_OPERATOR_KEY", None)
    return env


def serve_bento(tag: str, env: dict, cwd: Path) -> tuple[subprocess.Popen, str]:
    """TAG served as the project serves a Bento (bento/front/own_metrics.py: `bentoml serve` with its own Prometheus
    folder) on a free loopback port, once it answers /readyz: the process (its log in `.log_path`) and its URL."""
    port = free_port()
    log_path = cwd / f"bento-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(own_metrics.command(tag, "127.0.0.1", port), cwd=cwd, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    server.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, f"{url}/readyz", f"bentoml serve {tag}")
    return server, url


def serve_last_built(root: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """The Bento the project's last run built (artifacts/package/bento.json), served as `serve_bento` does."""
    import json

    tag = json.loads((root / "artifacts/package/bento.json").read_text())["bento_tag"]
    return serve_bento(tag, env, root)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int | None = None):
    """`mlflow server` over `backend_uri`, its artifacts in `artifacts` (on `port`, or a free one): yields its URL."""
    port = port or free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, f"{url}/health", "mlflow server")
        yield url
    finally:
        stop(proc)


class Postgres:
    """A PostgreSQL server in a temporary directory on a loopback port; `database(name)` makes a fresh database.

    As root it runs as `nobody` (initdb refuses root), in a folder under the system temp directory that
    `nobody` can reach (pytest's own temp folders are private to their owner)."""

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.base / "pgdata"
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.base, "nobody")
        self.port = free_port()
        self._count = 0
        subprocess.run([*self.as_user, "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        subprocess.run([*self.as_user, "pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "start",
                        "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"],
                       check=True, capture_output=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"  # SQLAlchemy 2.1: psycopg 3

    def database(self, prefix: str = "db") -> str:
        """A new, empty database on this server: its URL."""
        import sqlalchemy

        self._count += 1
        name = f"{prefix}_{self._count}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as db:
            db.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, "pg_ctl", "-D", str(self.data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def prefect_server(home: Path):
    """`prefect server start` on a free loopback port, analytics off, its database under `home`: (process, API URL)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    prefect_database.seed(home)  # as the project's server starts: on the database migrated at install
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api"
    wait_until_healthy(proc, f"{api}/health", "the Prefect server")
    return proc, api


def dask_cluster() -> tuple[str, list[subprocess.Popen]]:
    """`dask scheduler` and two `dask worker` processes (one thread each) on loopback, as a team runs a cluster:
    its address and the processes."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the workers run the project's code
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
                                   env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for i in range(2)]
    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
    return address, processes
