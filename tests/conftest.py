"""Shared fixtures: small real data, isolated stores for MLflow, BentoML and Prefect, a copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.front import free_port  # noqa: F401 - the tests' and benchmarks' free loopback port

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
    from tasks.config import load_params

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
        assert proc.poll() is None, f"{what} exited: {proc.stderr.read()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout_s:.0f} s"
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it is still there after 30 s (a Prefect worker waits for its flow run before exiting)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


