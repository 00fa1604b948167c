"""Shared fixtures and helpers: small real data, isolated stores for MLflow, BentoML and Prefect, a copy of the
project and the environment to run it in, Bentos of a small model, and starting and stopping servers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from bento.front import own_metrics
from bento.front.supervisor import free_port  # noqa: F401 - the tests' and benchmarks' free loopback port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_stores(tmp_path_factory, monkeypatch):
    """No test touches the user's MLflow, BentoML or Prefect state."""
    home = tmp_path_factory.mktemp("homes")
    monkeypatch.setenv("BENTOML_HOME", str(home / "bentoml"))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def params():
    from tasks.common.config import load_params

    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, params):
    """The bundled digits, ingested and split as the pipeline does, in a temporary folder."""
    from tasks.ingest import ingest
    from tasks.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    ingest(params.ingest, root, root / "raw")
    prepare(params.prepare, params.base.seed, root / "raw", root / "prepared")
    return root / "prepared"


def project_copy(dest: Path) -> Path:
    """The project as a fresh clone would have it (tracked and unignored files), as its own git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in listed:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("artifacts/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "copy for a test")
    return dest


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True).stdout


def wait_until_healthy(proc: subprocess.Popen, url: str, what: str, timeout_s: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the process's stderr if it exits first."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"{what} exited: {_output(proc)[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout_s:.0f} s"
        time.sleep(0.5)


def _output(proc: subprocess.Popen) -> str:
    if getattr(proc, "log_path", None):
        return Path(proc.log_path).read_text(errors="replace")
    return proc.stderr.read() if proc.stderr else ""


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it is still there after 30 s (a Prefect worker waits for its flow run before exiting)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)




def project_env(base: Path) -> dict:
    """The environment of a command run in a project copy: its own BentoML and Prefect homes under `base`."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BENTOML_HOME": str(base / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PREFECT_HOME": str(base / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOCAL_STORAGE_PATH": str(base / "prefect" / "storage"),
    }


def run_in(root: Path, env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command in `root` as a user would, its output captured."""
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def bento_env(home: Path) -> dict:
    """The environment of a process using the BentoML store at `home`, with `bentoml` on PATH and no API key."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("BENTO_API_KEY", None)
    return env


def build_bentos(base: Path, *options: str, name: str = "bentos") -> tuple[dict, dict]:
    """Bentos of a small model (tests/bento_builder.py, `options` as its command line) in a store under `base`:
    what the builder recorded (tags, models, the ONNX file) and the environment that reaches that store."""
    env = bento_env(base / "bentoml")
    out = base / f"{name}.json"
    done = subprocess.run([sys.executable, "-m", "tests.bento_builder", str(out), *options], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), env


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


@pytest.fixture(scope="module")
def dask_cluster():
    """`dask scheduler` and two `dask worker` processes (one thread each) on loopback, as a team runs a cluster."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the workers run the project's code
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
                                   env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for i in range(2)]
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
    yield address
    for process in reversed(processes):
        stop(process)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path):
    port = free_port()
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


@contextmanager
def postgres_cluster():
    """A PostgreSQL server in a temporary directory on a loopback port.

    As root it runs as `nobody` (initdb refuses root), in a folder under the system temp directory that
    `nobody` can reach (pytest's own temp folders are private to their owner).
    """
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pg-"))
    data = base / "pgdata"
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(base, "nobody")
    port = free_port()
    subprocess.run([*as_user, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-l", str(base / "log"), "-w", "start",
                    "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"  # SQLAlchemy 2.1 defaults to psycopg 3
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
