"""Sweeps on a real local Dask cluster (two worker processes), real Optuna storage and a real MLflow store:
child runs under one parent, a killed sweep resumed without losing or repeating a trial, SQLite refused for
parallel workers. The sweep's pick going through the gate is in tests/e2e/test_changes.py (it needs a champion)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.common.config import with_overrides
from tasks.common.errors import ConfigError
from tests.support.processes import MLOPS, REPO

SPACE = {"train.lr": {"low": 0.001, "high": 0.01, "log": True}, "train.epochs": {"choices": [3, 4]},
         "train.cnn_channels": {"choices": [[8, 16, 32], [16, 32, 64]]}, "compress.prune_ratio": {"low": 0.3, "high": 0.7}}
FAST = {"compress.finetune_epochs": 1, "compress.latency_repeats": 3, "compress.calibrations": ["minmax"],
        "train.patience": 2}


def _params(params, **sweep):
    return with_overrides(params, {**FAST, "sweep.space": SPACE, **{f"sweep.{k}": v for k, v in sweep.items()}})


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    from tasks.common import tracking

    tracking.use_store(root)
    return MlflowClient()


def test_a_sweep_on_a_local_cluster_logs_one_child_run_per_trial_under_one_parent_and_picks_from_the_front(
        params, prepared, tmp_path):
    from jobs.sweep import sweep

    cfg = _params(params, objectives=["accuracy", "size"], screen_margin=0.5)
    result = sweep(cfg, tmp_path, prepared, tmp_path / "sweeps", trials=4, parallel=2, address="local")
    assert sum(result.states.values()) == 4 and result.states.get("complete", 0) >= 1
    client = _client(tmp_path)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.name"] == result.name
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(int(r.data.tags["sweep.trial"]) for r in children) == [0, 1, 2, 3]
    for child in children:
        assert child.data.params["train.threads"] == str(max(1, os.cpu_count() // 2))  # its share of the cores
        assert child.data.tags["sweep.state"] in ("complete", "pruned")
    picked = result.picked
    assert picked["on_front"] and picked["feasible"] and picked["shipped"]
    assert picked["accuracy"] == max(r["accuracy"] for r in result.rows if r["on_front"])
    assert set(picked["overrides"]) == set(SPACE) and isinstance(picked["overrides"]["train.cnn_channels"], list)
    done = next(c for c in children if c.data.tags["sweep.trial"] == str(picked["trial"]))
    assert done.data.metrics["objective.size"] == pytest.approx(picked["size"])  # measured as compress measures
    assert parent.data.metrics["picked.accuracy"] == pytest.approx(picked["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/front.png", "sweep/front.json", "sweep/trials.json"} <= artifacts
    # the same call again continues the same study: it is already done
    again = sweep(cfg, tmp_path, prepared, tmp_path / "sweeps", trials=4, parallel=2, address="local")
    assert again.name == result.name and again.parent_run_id == result.parent_run_id
    assert sum(again.states.values()) == 4


KILLABLE = """
import sys
from pathlib import Path
from tasks.common.config import load_params, with_overrides
from jobs.sweep import sweep

if __name__ == "__main__":
    params = with_overrides(load_params(Path("params.yaml")), {overrides!r})
    sweep(params, Path({root!r}), Path({prepared!r}), Path({root!r}) / "sweeps", trials=6, parallel=2,
          address="local", name="killed")
"""


def test_a_killed_sweep_resumes_to_the_requested_count_with_no_trial_lost_or_counted_twice(params, prepared, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from jobs.sweep import sweep
    from jobs.sweep.study import finished

    overrides = {**FAST, "sweep.space": {**SPACE, "train.epochs": {"choices": [6, 8]}}, "sweep.objectives": ["accuracy"],
                 "sweep.pruner": "none"}
    cfg = with_overrides(params, overrides)
    script = tmp_path / "killable.py"
    script.write_text(textwrap.dedent(KILLABLE.format(overrides=overrides, root=str(tmp_path), prepared=str(prepared))))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "sweeps/killed/journal.log"
    deadline = time.monotonic() + 300
    study = None
    try:
        while time.monotonic() < deadline:  # kill it (and its workers) once trials have finished and others run
            time.sleep(0.5)
            if journal.is_file():
                storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
                try:
                    study = optuna.load_study(study_name="killed", storage=storage)
                except KeyError:
                    continue
                trials = study.get_trials(deepcopy=False)
                if len(finished(trials)) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
                    break
        else:
            pytest.fail("the sweep never had finished and running trials at once")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    running = sorted(t.number for t in study.get_trials(states=(TrialState.RUNNING,)))
    assert running and len(finished(study.get_trials())) < 6

    result = sweep(cfg, tmp_path, prepared, tmp_path / "sweeps", trials=6, parallel=2, address="local", name="killed")
    assert result.requeued == running
    trials = study.get_trials()
    assert len(finished(trials)) == 6 and sum(result.states.values()) == 6 + len(running)  # the killed ones: "fail"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    retries = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert sorted(retries) == running  # each killed trial ran again exactly once, with its own parameters
    for t in trials:
        if "retry_of" in t.user_attrs:
            original = trials[t.user_attrs["retry_of"]]
            # a trial killed while drawing its parameters is queued with those it drew; its copy draws the rest
            assert original.params.items() <= t.params.items() and t.state == TrialState.COMPLETE
            assert original.user_attrs["requeued"] and original.state == TrialState.FAIL
    client = _client(tmp_path)
    children = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert not [c for c in children if c.info.status == "RUNNING"]  # also one killed before its first epoch
    for number in running:
        run_id = trials[number].user_attrs.get("mlflow_run_id")
        if run_id:  # killed after its first epoch: its run says so
            assert client.get_run(run_id).info.status == "KILLED"


def test_sqlite_is_refused_for_parallel_workers_with_the_reason(params, prepared, tmp_path):
    from jobs.sweep import sweep

    cfg = _params(params, storage=f"sqlite:///{tmp_path / 'study.db'}")
    with pytest.raises(ConfigError, match="SQLite does not take writes from parallel workers"):
        sweep(cfg, tmp_path, prepared, tmp_path / "sweeps", trials=2, parallel=2)
    assert not (tmp_path / "study.db").exists()


def test_a_sweep_on_a_cluster_needs_storage_and_tracking_every_worker_reaches(params, prepared, tmp_path, monkeypatch):
    from jobs.sweep import sweep

    with pytest.raises(ConfigError, match="postgresql://"):
        sweep(_params(params), tmp_path, prepared, tmp_path / "sweeps", trials=2, address="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        sweep(_params(params, storage=str(tmp_path / "j.log")), tmp_path, prepared, tmp_path / "sweeps", trials=2,
              address="tcp://127.0.0.1:1")


def test_the_search_space_is_checked_against_params_yaml_before_any_trial(params, prepared, tmp_path):
    from jobs.sweep import sweep

    for space, message in (({"train.lr": {"low": -1.0, "high": 0.1}}, "sweep.space.train.lr"),
                           ({"train.nope": {"choices": [1, 2]}}, "'train.nope' is not a key"),
                           ({}, "sweep.space is empty")):
        cfg = with_overrides(params, {"sweep.space": space})
        with pytest.raises(ConfigError, match=message):
            sweep(cfg, tmp_path, prepared, tmp_path / "sweeps", trials=1, parallel=1)
    with pytest.raises(ConfigError, match="never changes the data"):
        with_overrides(params, {"sweep.space": {"ingest.path": {"choices": ["a"]}}})


def test_on_a_dask_scheduler_the_study_lives_in_postgresql_and_trials_log_through_the_tracking_server(
        params, prepared, tmp_path, dask_cluster, postgres, mlflow_on_postgres, monkeypatch):
    """A team's set-up: `dask scheduler` + two `dask worker` processes, the study in PostgreSQL (with Optuna's
    heartbeat), MLflow behind `mlflow server`; the trials run on the workers and nothing lands in the project."""
    import optuna
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    from jobs.sweep import sweep
    from jobs.sweep.study import finished

    database, server = postgres.database("optuna"), mlflow_on_postgres
    database = database.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it; nothing may record it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    cfg = _params(params, objectives=["accuracy"], storage=database, heartbeat_seconds=1)
    result = sweep(cfg, tmp_path, prepared, tmp_path / "sweeps", trials=3, parallel=2, address=dask_cluster)
    assert sum(result.states.values()) == 3
    study = optuna.load_study(study_name=result.name, storage=database)
    assert len(finished(study.get_trials())) == 3
    with sqlalchemy.create_engine(database).connect() as db:  # Optuna beat each trial's heartbeat
        assert db.execute(sqlalchemy.text("select count(*) from trial_heartbeats")).scalar() >= 3
    client = MlflowClient(server)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["sweep.storage"] == "rdb"  # never the database URL (it may hold a password)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 3 and {c.data.tags["sweep.worker"] for c in children} <= {"w0", "w1"}
    # two one-thread workers on this machine: each trial trains on half its cores, not on all of them
    assert {c.data.params["train.threads"] for c in children} == {str(max(1, os.cpu_count() // 2))}
    assert {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")} >= {"sweep/front.png"}
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sweeps" / result.name / "journal.log").exists()
    # the study's URL, password masked, in every param and tag the sweep and its trials recorded
    for run in (parent, *children):
        recorded = json.dumps({**run.data.params, **run.data.tags})
        assert "hunter2" not in recorded, run.info.run_id
    assert parent.data.params["storage"] == database.replace("hunter2", "***")
    assert {c.data.params["sweep.storage"] for c in children} == {database.replace("hunter2", "***")}


def test_on_postgresql_a_trial_whose_worker_dies_is_failed_by_its_heartbeat_and_run_again_once(
        params, prepared, tmp_path, dask_cluster, postgres, mlflow_on_postgres, monkeypatch):
    """A `dask worker` process SIGKILLed mid-trial (its nanny starts a new one): Optuna's heartbeat goes silent,
    a later trial's start fails it and queues it again; the sweep still ends with the requested count, the dead
    trial is not counted, its copy ran with its parameters, and its MLflow run is closed as KILLED."""
    from concurrent.futures import ThreadPoolExecutor

    import optuna
    from distributed import Client
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from jobs.sweep import sweep
    from jobs.sweep.study import finished

    database, server = postgres.database("optuna"), mlflow_on_postgres
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    cfg = with_overrides(_params(params, objectives=["accuracy"], storage=database, heartbeat_seconds=1,
                                 pruner="none", space={**SPACE, "train.epochs": {"choices": [12, 16]}}),
                         {"train.patience": 100})  # trials long enough to be killed mid-way
    optuna.storages.RDBStorage(database)  # the schema first: polling while the sweep creates it races on DDL
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(sweep, cfg, tmp_path, prepared, tmp_path / "sweeps", trials=4, parallel=2,
                              address=dask_cluster, name="worker-dies")
        victim = _kill_a_worker_mid_trial(database, "worker-dies", dask_cluster, Client, running)
        result = running.result(timeout=600)
    trials = optuna.load_study(study_name="worker-dies", storage=database).get_trials()
    assert trials[victim].state == TrialState.FAIL and result.requeued == [victim]
    assert len(finished(trials)) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]
    copies = [t for t in trials if victim in t.system_attrs.get("retry_history", [])]
    assert len(copies) == 1 and copies[0].params == trials[victim].params
    assert copies[0].state == TrialState.COMPLETE
    run = MlflowClient(server).get_run(trials[victim].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["sweep.state"] == "requeued"


def _kill_a_worker_mid_trial(database: str, study: str, address: str, client_class, running) -> int:
    """SIGKILL the worker process of the first trial seen running past its first epoch; that trial's number."""
    import optuna
    from optuna.trial import TrialState

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not running.done():
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study, storage=database).get_trials(deepcopy=False)
        except KeyError:
            continue
        busy = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
        if busy:
            with client_class(address, timeout="30s") as client:
                names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
                pids = client.run(os.getpid)
            pid = next(pids[a] for a, name in names.items() if name == busy[0].user_attrs["worker"])
            os.kill(pid, signal.SIGKILL)
            return busy[0].number
    running.result()  # raises the sweep's own error, if that is why it ended
    pytest.fail("no trial was seen running past its first epoch")


def test_the_command_refuses_non_sweep_settings_and_data_that_was_never_validated(tmp_path, prefect_api):
    from tests.support.processes import project_copy, project_env, run_in

    root = project_copy(tmp_path / "project")
    env = project_env(tmp_path, prefect_api)
    refused = run_in(root, env, MLOPS, "sweep", "--set", "train.lr=0.1")
    assert refused.returncode == 2 and "only sweep.* keys" in refused.stderr, refused.stderr[-2000:]
    unvalidated = run_in(root, env, MLOPS, "sweep", "--set", "sweep.trials=2")
    assert unvalidated.returncode == 2, unvalidated.stderr[-2000:]
    assert "not a validated version yet" in unvalidated.stderr and "run the pipeline first" in unvalidated.stderr
    assert not (root / "sweeps").exists()
