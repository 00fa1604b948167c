"""Sweeps: a parallel, resumable Optuna search over params.yaml's train.* and compress.* keys (`sweep.space`).

    study.py   where the study lives (a journal file, or PostgreSQL), and a killed sweep's trials re-queued
    space.py   `sweep.space` as Optuna suggestions, and back to params.yaml overrides
    trial.py   one trial on a worker: train (pruned per epoch), screen, compress, tell the study
    report.py  every trial, the front, the trial picked, the plot

One MLflow parent run per sweep in `<experiment>-sweep`, one child run per trial. A sweep registers and promotes
nothing: flows/sweep.py hands the picked trial's overrides to a normal pipeline run, which gates it like any run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.common.config import Params
from tasks.common.errors import ConfigError, PipelineError
from jobs.sweep.study import abandoned, finished, requeue_stale, storage_spec
from jobs.sweep.trial import TrialJob, run_one

log = logging.getLogger(__name__)


class SweepBusy(PipelineError):
    """Another process is driving this sweep."""


@dataclass(frozen=True)
class SweepResult:
    name: str
    folder: str
    parent_run_id: str
    data_digest: str  # of the prepared splits the trials trained on: the pipeline run must see the same
    objectives: tuple[str, ...]
    states: dict[str, int]  # finished trials by state
    requeued: list[int]  # trials a killed sweep or a dead worker left running: failed, and queued again
    picked: dict | None  # the trial row handed to the pipeline (report.trial_rows), None when no trial is feasible
    rows: list[dict]
    seconds: float


def sweep(params: Params, root: Path, prepared_dir: Path, out_root: Path, trials: int = 0, parallel: int = 0,
          address: str | None = None, name: str = "") -> SweepResult:
    """Run the study `name` (default: from the data version and the search space) until `trials` trials have
    finished, `parallel` at a time, in this process, on a local Dask cluster or on the one at `address`."""
    import optuna
    from filelock import FileLock, Timeout

    from jobs.sweep.report import directions
    from jobs.sweep.space import check

    cfg = params.sweep
    trials, parallel = trials or cfg.trials, parallel or cfg.parallel
    check(cfg.space, params)
    digest = data_digest(prepared_dir)
    name = name or default_name(params, digest)
    folder = Path(out_root) / name
    remote = bool(address) and address != "local"
    spec = storage_spec(cfg.storage, folder, parallel, remote, cfg.heartbeat_seconds)
    if remote and os.environ.get("MLFLOW_TRACKING_URI", "sqlite").startswith(("sqlite", "file:", "/")):
        raise ConfigError("trials on a cluster log to MLflow from the workers: set MLFLOW_TRACKING_URI to a tracking "
                          "server every worker reaches (the project's SQLite store is this machine's only)")
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as err:
        raise SweepBusy(f"sweep '{name}' is being run by another process (it holds {lock.lock_file})") from err
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=name, storage=spec.open(), load_if_exists=True,
                                    directions=directions(cfg.objectives))
        _same_study(study, digest, cfg.objectives)
        parent = _parent_run(root, params, study, spec.location if spec.kind == "journal" else spec.kind)
        requeued = requeue_stale(study, spec)
        _close_abandoned(study, parent)
        if requeued:
            log.info("sweep %s: trials %s were left running by a killed sweep: queued again", name, requeued)
        started = time.perf_counter()
        threads = 0 if remote else max(1, (os.cpu_count() or 1) // parallel)  # 0: each worker's machine decides
        first = len(study.trials)

        def job(i: int) -> TrialJob:
            return TrialJob(str(root), str(prepared_dir), str(folder), name, spec, params.as_dict(), parent,
                            params.base.seed * 1000 + first + i, threads, os.environ.get("MLFLOW_TRACKING_URI", ""))

        try:
            _drive(study, job, trials, parallel, address)
        except BaseException:  # the parent run says the sweep stopped; the same command continues it
            from mlflow.tracking import MlflowClient

            MlflowClient().set_terminated(parent, "FAILED")
            raise
        return _finish(study, params, folder, parent, digest, time.perf_counter() - started)
    finally:
        lock.release()


def data_digest(prepared_dir: Path) -> str:
    """The prepared splits' content hash: the data version the sweep searched on."""
    from tasks.common.dataset import directory_md5

    hashes = {split: directory_md5(Path(prepared_dir) / split) for split in ("train", "val", "test")}
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def default_name(params: Params, digest: str) -> str:
    """`<dataset>-<hash>` of the data version, the search space and the objectives: the same command continues the
    same study; new data, or another space, starts a new one."""
    what = json.dumps({"data": digest, "space": params.sweep.model_dump(mode="json")["space"],
                       "objectives": list(params.sweep.objectives)}, sort_keys=True)
    return f"{params.base.name}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


def _drive(study, job, target: int, parallel: int, address: str | None) -> None:
    """Start trials until `target` have finished: `parallel` at a time, each on a worker of its own."""
    from tqdm import tqdm

    from jobs import engine

    done = lambda: min(len(finished(study.get_trials(deepcopy=False))), target)  # noqa: E731
    progress = tqdm(total=target, initial=done(), desc=f"sweep {study.study_name}", unit="trial")
    launched = 0
    if parallel == 1 and not address:
        while done() < target:
            run_one(job(launched))
            launched += 1
            progress.update(done() - progress.n)
        progress.close()
        return
    from distributed import as_completed

    with engine.connect(address or "local", workers=parallel) as client:
        pending = as_completed()
        while True:
            while done() + pending.count() < target and pending.count() < parallel:
                pending.add(client.submit(run_one, job(launched), pure=False))
                launched += 1
            if not pending.count():
                break
            next(pending).result()  # a trial's own failure is recorded in the study; this raises only a crash
            progress.update(done() - progress.n)
    progress.close()


def _same_study(study, digest: str, objectives: tuple[str, ...]) -> None:
    """A study continues only on the data and objectives it started with."""
    attrs = study.user_attrs
    if not attrs:
        study.set_user_attr("data_digest", digest)
        study.set_user_attr("objectives", list(objectives))
        return
    if attrs.get("data_digest") != digest:
        raise ConfigError(f"sweep '{study.study_name}' searched another data version ({attrs['data_digest'][:12]}, "
                          f"now {digest[:12]}): leave --name out for a study of this data, or give a new one")
    if list(attrs.get("objectives", [])) != list(objectives):
        raise ConfigError(f"sweep '{study.study_name}' optimises {attrs.get('objectives')}, not {list(objectives)}: "
                          "give a new --name")


def _parent_run(root: Path, params: Params, study, storage: str) -> str:
    """The sweep's MLflow run (created once, found again on a restart): its config, and later its front."""
    from mlflow.tracking import MlflowClient

    from tasks.common import tracking
    from tasks.common.secrets import redact, redacted

    existing = study.user_attrs.get("mlflow_parent_run_id")
    experiment_id = tracking.configure(root, f"{params.base.experiment}-sweep")
    client = MlflowClient()
    if existing:
        client.update_run(existing, status="RUNNING")
        return existing
    run = client.create_run(experiment_id, run_name=study.study_name, tags={
        "sweep.name": study.study_name, "sweep.storage": redact(storage),
        "sweep.data_digest": study.user_attrs["data_digest"],
        "mlflow.note.content": "A sweep: one child run per trial (see the Child runs of this run); "
                               "sweep/front.png and sweep/trials.json hold the front."})
    sweep = redacted(params.sweep.model_dump(mode="json"))
    for key, value in {**{k: v for k, v in sweep.items() if k not in ("space", "trials", "parallel")},
                       **{f"space.{k}": json.dumps({a: b for a, b in v.items() if b not in (None, False, [])})
                          for k, v in sweep["space"].items()}}.items():
        client.log_param(run.info.run_id, key, json.dumps(value) if isinstance(value, (list, dict)) else value)
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def _close_abandoned(study, parent: str) -> list[int]:
    """End the MLflow runs of abandoned trials as KILLED, found by their tags (a trial that died before its first
    epoch never wrote its run id into the study): their process died, so their runs still say RUNNING, or FINISHED
    when it died between the end of training and the study recording the trial (which runs again); the abandoned
    trials' numbers."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    numbers = abandoned(study.get_trials(deepcopy=False))
    if numbers:
        experiment = client.get_run(parent).info.experiment_id
        for run in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'"):
            if run.data.tags.get("sweep.trial") in {str(n) for n in numbers}:
                client.set_tag(run.info.run_id, "sweep.state", "requeued")
                client.set_terminated(run.info.run_id, "KILLED")
    return sorted(numbers)


def _finish(study, params: Params, folder: Path, parent: str, digest: str, seconds: float) -> SweepResult:
    """Every trial, the front and the pick, written beside the study and logged on the parent run."""
    from collections import Counter

    import mlflow
    from mlflow.tracking import MlflowClient

    from tasks.common.atomic import write_json, write_with
    from jobs.sweep.report import pick, plot, trial_rows

    objectives = tuple(params.sweep.objectives)
    requeued = _close_abandoned(study, parent)  # left by a dead worker during this sweep too (Optuna's heartbeat)
    rows = trial_rows(study, objectives)
    picked = pick(rows, objectives, params.sweep.pick_within)
    write_json(folder / "trials.json", rows)
    write_with(folder / "front.png", lambda tmp: plot(tmp, rows, objectives, picked and picked["trial"]))
    client = MlflowClient()
    if rows:
        for name, part in (("trials", rows), ("front", [r for r in rows if r["on_front"]])):
            columns = {k: [json.dumps(r[k]) if isinstance(r[k], dict) else r[k] for r in part] for k in rows[0]}
            mlflow.log_table(columns, artifact_file=f"sweep/{name}.json", run_id=parent)
    client.log_artifact(parent, str(folder / "front.png"), artifact_path="sweep")
    states = Counter(r["state"] for r in rows)
    for state in ("complete", "pruned", "fail"):
        client.log_metric(parent, f"trials_{state}", states.get(state, 0))
    client.log_metric(parent, "sweep_seconds", seconds)
    if picked:
        for name in objectives:
            client.log_metric(parent, f"picked.{name}", picked[name])
        client.set_tag(parent, "sweep.picked_trial", str(picked["trial"]))
        client.set_tag(parent, "sweep.picked_overrides", json.dumps(picked["overrides"]))
    client.set_terminated(parent, "FINISHED")
    result = SweepResult(study.study_name, str(folder), parent, digest, objectives, dict(states), requeued, picked,
                         rows, seconds)
    write_json(folder / "summary.json", {k: v for k, v in result.__dict__.items() if k != "rows"})
    return result
