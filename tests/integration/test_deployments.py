"""Scheduled deployments against a real Prefect server on a loopback port (the session's: conftest.py): prefect.yaml
to a work pool with a worker, and `mlops schedule`; each run is read back through the Prefect API."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import MLOPS, project_copy, project_env, run_in, stop

HTTP = httpx.Client(timeout=60)  # a 2-core machine running a server, a worker and a flow answers slowly at times
# Small and quick: the orchestration is under test here, not the model.
PARAMS = {"push_to_remote": False, "overrides": {"train.epochs": 3, "evaluate.min_accuracy": 0.5,
                                                 "compress.finetune_epochs": 1, "compress.calibrations": ["minmax"]}}
# Every hour from a few seconds after serving starts (flows/deploy.py --interval): one scheduled run, in seconds.
INTERVAL = 3600


@pytest.fixture
def server(tmp_path, prefect_api):
    return prefect_api, project_env(tmp_path, prefect_api)


def _trigger(root: Path, env: dict, deployment: str, params: dict = PARAMS) -> str:
    done = run_in(root, env, sys.executable, "-m", "prefect", "deployment", "run", deployment, "--params", json.dumps(params))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)


def _wait_for_final_state(api: str, flow_run_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            run = HTTP.get(f"{api}/flow_runs/{flow_run_id}").raise_for_status().json()
        except httpx.TransportError:  # busy, not gone: ask again
            time.sleep(1)
            continue
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish within {timeout_s} s")


def wait_for_scheduled_run(api: str, deployment: str, after, proc: subprocess.Popen, log: Path | None = None,
                           timeout_s: float = 900) -> dict:
    """The first run of `deployment` that its schedule started (not a trigger) after `after`, once it is final.
    Cancelled runs are passed over: serve cancels the older runs missed while nothing served them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()[-3000:] if log else ''}"
        try:
            found = HTTP.get(f"{api}/deployments/name/{deployment}")
            if found.status_code == 200:
                runs = HTTP.post(f"{api}/flow_runs/filter", json={"flow_runs": {
                    "deployment_id": {"any_": [found.json()["id"]]}, "start_time": {"after_": after.isoformat()}}},
                ).raise_for_status().json()
                for run in runs:
                    if run["auto_scheduled"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED"):
                        return run
        except httpx.TransportError:  # busy, or not started yet
            pass
        time.sleep(2)
    raise AssertionError(f"no scheduled run of {deployment} finished within {timeout_s} s")


def _deployment(api: str, name: str) -> dict:
    return HTTP.get(f"{api}/deployments/name/digits-pipeline/{name}").raise_for_status().json()


def test_the_work_pool_deployment_and_the_served_one_run_on_schedule_and_on_demand(server, tmp_path):
    api, env = server
    root = project_copy(tmp_path / "project")
    env = {**env, "PIPELINE_ROOT": str(root)}
    assert run_in(root, env, sys.executable, "-m", "prefect", "work-pool", "create", "digits-pool", "--type", "process").returncode == 0
    deployed = run_in(root, env, sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    nightly = _deployment(api, "nightly")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 3 * * *"] and nightly["work_pool_name"] == "digits-pool"
    drift = HTTP.get(f"{api}/deployments/name/drift-check/drift-hourly").raise_for_status().json()
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == ["0 * * * *"]
    assert drift["parameters"]["retrain_deployment"] == "digits-pipeline/nightly"
    scoring = HTTP.get(f"{api}/deployments/name/score/score-hourly").raise_for_status().json()
    assert [s["schedule"]["cron"] for s in scoring["schedules"]] == ["30 * * * *"]
    assert scoring["parameters"]["input"] == "incoming" and scoring["work_pool_name"] == "digits-pool"
    sweeping = HTTP.get(f"{api}/deployments/name/sweep/sweep-weekly").raise_for_status().json()
    assert [s["schedule"]["cron"] for s in sweeping["schedules"]] == ["0 4 * * 0"]
    assert sweeping["parameters"]["run_pipeline"] is True and sweeping["work_pool_name"] == "digits-pool"

    run_id = _trigger(root, env, "digits-pipeline/nightly")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "digits-pool"], cwd=root,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = _wait_for_final_state(api, run_id)
    finally:
        stop(worker)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["parameters"]["overrides"]["train.epochs"] == 3
    assert json.loads((root / "artifacts/train/metrics.json").read_text())["epochs_run"] == 3  # the override applied
    artifacts = HTTP.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    assert any(a["key"] == "pipeline-report" and "## Compression" in a["data"] for a in artifacts)

    sets = [f"--set={key}={json.dumps(value)}" for key, value in PARAMS["overrides"].items()]  # JSON is YAML
    serving_since = datetime.datetime.now(datetime.timezone.utc)
    serve = subprocess.Popen([MLOPS, "schedule", "--name", "local", "--interval", str(INTERVAL),
                              "--no-push", "--score-input", "incoming", "--score-cron", "0 0 2 1 *",
                              "--sweep-cron", "0 0 1 1 *", *sets],  # score and sweep: registered, never due here
                             cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # PREFECT_API_URL is set: serve uses that server (no server of its own) and its scheduler fires the runs
        run = wait_for_scheduled_run(api, "digits-pipeline/local", after=serving_since, proc=serve)
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert [s["schedule"]["interval"] for s in _deployment(api, "local")["schedules"]] == [INTERVAL]
        assert not (root / ".prefect").exists()
        scoring = HTTP.get(f"{api}/deployments/name/score/local-score").raise_for_status().json()
        assert [s["schedule"]["cron"] for s in scoring["schedules"]] == ["0 0 2 1 *"]
        assert scoring["parameters"]["input"] == str((root / "incoming").resolve())
        assert scoring["parameters"]["push_to_remote"] is False
        sweeping = HTTP.get(f"{api}/deployments/name/sweep/local-sweep").raise_for_status().json()
        assert [s["schedule"]["cron"] for s in sweeping["schedules"]] == ["0 0 1 1 *"]
        assert sweeping["parameters"] == {"root": str(root.resolve()), "push_to_remote": False}
        # labels 0-4 only: the data now breaks the suite; the run fails at validate, naming it, and is not retried
        failing = {**PARAMS, "overrides": {**PARAMS["overrides"], "validate.labels": [0, 1, 2, 3, 4]}}
        failed = _wait_for_final_state(api, _trigger(root, env, "digits-pipeline/local", failing))
    finally:
        stop(serve)
    assert failed["state"]["type"] == "FAILED"
    message = failed["state"]["message"]
    assert "stage 'validate' failed" in message and "ValidationFailed" in message, message
    task_runs = HTTP.post(f"{api}/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [failed["id"]]}}}).json()
    validate = [t for t in task_runs if t["name"].startswith("validate")]
    assert len(validate) == 1 and validate[0]["run_count"] == 1  # bad data is not retried
    report = HTTP.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [failed["id"]]}}}).json()
    assert any("**Stage:** validate" in a["data"] for a in report)
    assert os.environ.get("PREFECT_API_URL") is None  # nothing leaked into this process
