"""Schedules that fire on the embedded default: `mlops schedule` with no PREFECT_API_URL starts the
project's own Prefect server, and an interval deployment (its first run seconds after serving starts) runs by itself
(not triggered) to COMPLETED, with its report; stopped and started again, the same deployment on the same database
still fires."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from flows.prefect_server import is_healthy
from tests.integration.test_deployments import INTERVAL, PARAMS, wait_for_scheduled_run
from tests.support.processes import MLOPS, free_port, project_copy, project_env, run_in, stop

DEPLOYMENT = "digits-pipeline/hourly"


def _serve(root: Path, env: dict, port: int, log: Path) -> subprocess.Popen:
    sets = [f"--set={key}={json.dumps(value)}" for key, value in PARAMS["overrides"].items()]  # JSON is YAML
    with log.open("a") as out:
        return subprocess.Popen([MLOPS, "schedule", "--name", "hourly",
                                 "--interval", str(INTERVAL), "--no-push", "--port", str(port), *sets],
                                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_a_served_schedule_fires_on_the_embedded_server_and_again_after_a_restart(tmp_path):
    root = project_copy(tmp_path / "project")
    env = project_env(tmp_path)
    port = free_port()
    api, log = f"http://127.0.0.1:{port}/api", tmp_path / "serve.log"

    first_start = datetime.datetime.now(datetime.timezone.utc)
    serve = _serve(root, env, port, log)
    try:
        run = wait_for_scheduled_run(api, DEPLOYMENT, after=first_start, proc=serve, log=log)
        assert run["state"]["type"] == "COMPLETED", (run["state"], log.read_text()[-3000:])
        artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
                               timeout=30).json()
        assert any(a["key"] == "pipeline-report" and "## Compression" in a["data"] for a in artifacts)
        assert json.loads((root / "artifacts/train/metrics.json").read_text())["epochs_run"] == 3  # --set applied
        status = run_in(root, env, MLOPS, "schedule", "status", "--port", str(port))
        assert status.returncode == 0, status.stderr[-2000:]
        assert DEPLOYMENT in status.stdout and f"every {INTERVAL} s" in status.stdout and "next run:  20" in status.stdout
        assert f"Completed  scheduled  {run['name']}" in status.stdout, status.stdout
    finally:
        stop(serve)
    assert "UI http://127.0.0.1:" in log.read_text()
    with pytest.raises(httpx.TransportError):  # the server started by serve stopped with it
        httpx.get(f"{api}/health", timeout=2)
    assert (root / ".prefect" / "prefect.db").is_file() and "?? .prefect" not in run_in(root, env, "git", "status",
                                                                                          "--short").stdout

    restarted = datetime.datetime.now(datetime.timezone.utc)
    serve = _serve(root, env, port, log)
    try:
        again = wait_for_scheduled_run(api, DEPLOYMENT, after=restarted, proc=serve, log=log)
        assert again["state"]["type"] == "COMPLETED", (again["state"], log.read_text()[-3000:])
        assert again["deployment_id"] == run["deployment_id"]  # the same deployment, from the kept database
        assert httpx.get(f"{api}/flow_runs/{run['id']}", timeout=30).json()["state"]["type"] == "COMPLETED"
        cancelled = httpx.post(f"{api}/flow_runs/filter", timeout=30, json={"flow_runs": {
            "deployment_id": {"any_": [run["deployment_id"]]}, "state": {"type": {"any_": ["CANCELLED"]}}}}).json()
        assert all(c["state"]["message"].startswith("missed: due ") for c in cancelled)  # only older missed runs
        serve.kill()  # no `finally` runs in serve now: its server must still not outlive it
        serve.wait(timeout=30)
        deadline = time.monotonic() + 60
        while is_healthy(api):
            assert time.monotonic() < deadline, "the Prefect server outlived the serve process that started it"
            time.sleep(0.5)
    finally:
        stop(serve)



def test_status_without_a_running_server_reads_the_project_database(tmp_path):
    root = project_copy(tmp_path / "project")
    env = project_env(tmp_path)
    status = run_in(root, env, MLOPS, "schedule", "status", "--port", str(free_port()))
    assert status.returncode == 0, status.stderr[-2000:]
    assert "No deployments on this server" in status.stdout and "Prefect server (started)" in status.stdout
    assert (root / ".prefect" / "prefect.db").is_file() and not (root / ".prefect" / "server.json").exists()


def test_serve_refuses_a_taken_port_naming_it(tmp_path):
    root = project_copy(tmp_path / "project")
    env = project_env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = run_in(root, env, MLOPS, "schedule", "--port", str(port), timeout=120)
    assert served.returncode == 2
    assert f"127.0.0.1:{port} is taken by another program; pass --port" in served.stderr
