"""Fixtures every test folder shares: isolated stores, small real data, and what a session makes once (the Bentos,
a trained project) or starts once (a Dask cluster, PostgreSQL with an MLflow server on it, a Prefect server).

Tests are grouped by kind, one folder each, and marked by their folder: `unit` (pure functions), `stages` (one
stage on small real data), `serving` (a real `bentoml serve`), `integration` (real servers, clusters,
schedules), `e2e` (whole flows). The last three are also `slow`. Helpers that are not fixtures live in
tests/support/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import MLOPS, REPO, project_copy, project_env, run_in, stop, stop_kept_server
from tests.support.servers import Postgres, bento_env, dask_cluster as start_dask, prefect_server
from tests.support.shared import made_once

KINDS = ("unit", "stages", "serving", "integration", "e2e")
SLOW_KINDS = ("serving", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Each test is marked with its folder's kind (and `slow` beyond stages): `pytest -m unit`, `-m "not slow"`."""
    tests = Path(__file__).parent
    for item in items:
        kind = Path(item.fspath).relative_to(tests).parts[0]
        assert kind in KINDS, f"{item.nodeid}: tests live in one of the folders {KINDS}"
        item.add_marker(kind)
        if kind in SLOW_KINDS:
            item.add_marker("slow")


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


@dataclass(frozen=True)
class BentoStore:
    """The session's BentoML store: what tests/support/bento_builder.py built into it, by set, and the
    environment of a process that reaches it."""

    home: Path
    built: dict
    env: dict

    def bentos(self, name: str) -> list[str]:
        return self.built[name]["bentos"]

    def models(self, name: str) -> list[str]:
        return self.built[name]["models"]

    def onnx(self, name: str) -> Path:
        return Path(self.built[name]["onnx"])


@pytest.fixture(scope="session")
def bento_store(tmp_path_factory) -> BentoStore:
    """Every Bento the tests serve, built once per session into one store that tests only read."""
    def build(folder: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "tests.support.bento_builder", str(folder / "built.json")],
                              cwd=REPO, env=bento_env(folder / "bentoml"), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    folder = made_once(tmp_path_factory, "bento-store", build)
    home = folder / "bentoml"
    return BentoStore(home, json.loads((folder / "built.json").read_text()), bento_env(home))


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """The project after `mlops run` at the default params, as a new user's first `make run` (the project's Prefect
    server started and kept by the command, stopped after it as its idle time would: flows/kept_server.py; the
    whole DAG), made once per session: `base/project`, its store `base/bentoml`, and the run's output in
    `base/run.json`. Tests never change it: they work on a copy (tests.support.processes.copy_trained)."""
    def run(base: Path) -> None:
        root = project_copy(base / "project")
        (base / "bentoml").mkdir()
        done = run_in(root, project_env(base), MLOPS, "run")
        assert stop_kept_server(root), "the command kept no Prefect server"
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        (base / "run.json").write_text(json.dumps({"stdout": done.stdout, "stderr": done.stderr}))

    return made_once(tmp_path_factory, "trained-project", run)


@pytest.fixture(scope="session")
def dask_cluster():
    """A `dask scheduler` with two one-thread `dask worker` processes on loopback: its address."""
    address, processes = start_dask()
    yield address
    for process in reversed(processes):
        stop(process)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (`postgres.database()` gives each test a fresh database)."""
    server = Postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """`mlflow server` with a PostgreSQL backend, as a team shares one: its URL."""
    from tests.support.servers import mlflow_server

    with mlflow_server(postgres.database("mlflow"), tmp_path_factory.mktemp("mlflow-artifacts")) as url:
        yield url


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A `prefect server start` for the flows tests run (one per session instead of a temporary server per flow):
    its API URL, for tests.support.processes.project_env(base, prefect_api)."""
    process, api = prefect_server(tmp_path_factory.mktemp("prefect-server"))
    yield api
    stop(process)
