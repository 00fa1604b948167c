"""One trial, where a worker runs it (or this process): ask the study, train, screen, compress, tell.

The trial's MLflow run is a child of the sweep's parent run by an explicit `mlflow.parentRunId` tag: MLflow's
active run is per process, and trials run in other processes, on other machines."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.common.errors import PipelineError
from jobs.sweep.study import StorageSpec

log = logging.getLogger(__name__)
DIRECTIONS = {"accuracy": "maximize", "size": "minimize", "latency_b1": "minimize", "latency_b64": "minimize"}


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs for one trial; plain values, so it travels to any worker."""

    root: str  # the project: MLflow's local store, and the data (workers on a cluster need it at the same path)
    prepared: str
    out: str  # the sweep's folder: trials/<number>/ holds each trial's model and variants
    study: str
    storage: StorageSpec
    params: dict  # the resolved params.yaml the searched keys are applied to
    parent_run_id: str
    seed: int  # the sampler's: each job its own, or parallel workers would draw the same startup points
    threads: int  # CPU threads for this trial's training: the cores shared among parallel trials; 0: from the
    # worker's machine (its cores shared among the trials its Dask workers run at once)
    tracking_uri: str  # MLFLOW_TRACKING_URI of the driver; empty: the project's store


def run_one(job: TrialJob) -> int:
    """Run the study's next trial (a re-queued one first); its number."""
    import optuna

    from tasks.common.config import Params
    from tasks.common.errors import ConfigError

    if job.tracking_uri:  # the driver's tracking server; empty: the project's own store under `root`
        os.environ["MLFLOW_TRACKING_URI"] = job.tracking_uri
    if not Path(job.prepared).is_dir():
        raise PipelineError(f"{job.prepared} is not on this worker ({os.uname().nodename}): trials on a cluster need "
                            "the project at the same path on every worker (a shared filesystem)")
    params = Params.model_validate(job.params)
    cfg = params.sweep
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=job.study, storage=job.storage.open(), sampler=_sampler(cfg, job.seed),
                              pruner=_pruner(cfg))
    numbers = []

    def objective(trial):
        numbers.append(trial.number)
        try:
            return _objective(trial, job, params)
        except optuna.TrialPruned as why:
            trial.set_user_attr("pruned", str(why))
            raise
        except (ConfigError, RuntimeError) as err:  # a combination params.yaml refuses (vit width and heads), or one
            # the hardware does not take (out of memory): the trial fails with its reason, the sweep goes on
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise

    # Optuna's own loop, for one trial: on a database it beats the trial's heartbeat while it runs, and first
    # fails and re-queues the trials whose workers went silent
    study.optimize(objective, n_trials=1, catch=(ConfigError, RuntimeError), gc_after_trial=True)
    return numbers[0]


def _objective(trial, job: TrialJob, params) -> list[float]:
    import optuna

    from tasks.common.config import with_overrides
    from jobs.sweep.space import suggest
    from tasks.train import RunHooks, train

    cfg = params.sweep
    overrides = suggest(trial, cfg.space, params)
    trial.set_user_attr("overrides", overrides)
    worker = _worker()
    trial.set_user_attr("worker", worker)  # in the study too: which machine to look at when a trial hangs or dies
    trial_params = with_overrides(params, {**overrides, "train.threads": job.threads or _share_of_cores(),
                                           "base.experiment": f"{params.base.experiment}-sweep"})
    out = Path(job.out) / "trials" / f"{trial.number:04d}"
    single = tuple(cfg.objectives) == ("accuracy",)
    tags = {"mlflow.parentRunId": job.parent_run_id, "mlflow.runName": f"trial-{trial.number}",
            "sweep.name": job.study, "sweep.trial": str(trial.number), "sweep.worker": worker,
            **({"sweep.retry_of": str(trial.user_attrs["retry_of"])} if "retry_of" in trial.user_attrs else {})}
    started = time.monotonic()

    def on_epoch(epoch: int, row: dict) -> None:
        if epoch == 1:
            trial.set_user_attr("mlflow_run_id", _run_id(out))
        if single:
            trial.report(row["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"stopped at epoch {epoch}: validation accuracy {row['val_accuracy']:.4f} "
                                         f"below the {cfg.pruner} rule")
        if time.monotonic() - started > cfg.budget_minutes * 60:
            raise optuna.TrialPruned(f"stopped at epoch {epoch}: over sweep.budget_minutes ({cfg.budget_minutes:g})")

    try:
        result = train(trial_params, Path(job.root), Path(job.prepared), out, RunHooks(tags, on_epoch))
    except optuna.TrialPruned as why:
        _close(out, "KILLED", {"sweep.state": "pruned", "sweep.pruned": str(why)})
        raise
    trial.set_user_attr("fp32_val_accuracy", result.val_accuracy)
    trial.set_user_attr("mlflow_run_id", result.run_id)
    if single:
        trial.set_constraint("min_accuracy", cfg.min_accuracy - result.val_accuracy)
        _close(out, "FINISHED", {"sweep.state": "complete"}, {"objective.accuracy": result.val_accuracy})
        return [result.val_accuracy]
    _screen(trial, result.val_accuracy, cfg.screen_margin, out)
    return _compressed(trial, trial_params, job, out, cfg)


def _screen(trial, accuracy: float, margin: float, out: Path) -> None:
    """Several objectives: only a trial whose fp32 model comes near the best so far is worth compressing."""
    import optuna

    best = max((t.user_attrs.get("fp32_val_accuracy", 0.0) for t in trial.study.get_trials(deepcopy=False)
                if t.number != trial.number), default=0.0)
    if accuracy < best - margin:
        why = (f"screened out: fp32 validation accuracy {accuracy:.4f}, more than sweep.screen_margin ({margin:g}) "
               f"below the best so far ({best:.4f}); not compressed")
        _close(out, "FINISHED", {"sweep.state": "pruned", "sweep.pruned": why})
        raise optuna.TrialPruned(why)


def _compressed(trial, trial_params, job: TrialJob, out: Path, cfg) -> list[float]:
    """The shipped variant's figures, measured by the compress stage itself, as the study's objective values."""
    from tasks.compress import compress

    result = compress(trial_params, Path(job.root), Path(job.prepared), out, out / "compress")
    row = next(r for r in result.table if r["variant"] == result.chosen)
    figures = {"accuracy": row["val_accuracy"], "size": row["size_bytes"] / 1024,
               "latency_b1": row["latency_b1_ms"], "latency_b64": row["latency_b64_ms"]}
    trial.set_user_attr("shipped", {"variant": result.chosen, **figures, "test_accuracy": row["accuracy"]})
    trial.set_constraint("min_accuracy", cfg.min_accuracy - figures["accuracy"])
    if cfg.max_size_kb:
        trial.set_constraint("max_size_kb", figures["size"] - cfg.max_size_kb)
    if cfg.max_latency_ms:
        trial.set_constraint("max_latency_ms", figures["latency_b1"] - cfg.max_latency_ms)
    _close(out, "FINISHED", {"sweep.state": "complete", "sweep.shipped": result.chosen},
           {f"objective.{name}": figures[name] for name in cfg.objectives})
    return [figures[name] for name in cfg.objectives]


def _dask_worker():
    """The Dask worker running this trial, or None outside a Dask task."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _worker() -> str:
    """The Dask worker running this trial (its name), or `in-process`."""
    worker = _dask_worker()
    return "in-process" if worker is None else str(worker.name)


def _share_of_cores() -> int:
    """On a cluster: this machine's cores over the trials that can run on it at once (the threads of all Dask
    workers on this host), so that `dask worker --nworkers 4` on one machine does not run four trials each on
    every core. Outside Dask: every core."""
    cores = os.cpu_count() or 1
    worker = _dask_worker()
    if worker is None:
        return cores
    host = worker.address.rsplit(":", 1)[0]
    workers = worker.client.scheduler_info(n_workers=-1)["workers"]
    slots = sum(w["nthreads"] for address, w in workers.items() if address.rsplit(":", 1)[0] == host)
    return max(1, cores // max(slots, 1))


def _run_id(out: Path) -> str:
    from tasks.common.outputs import TrainRun

    return TrainRun.read(out / "run.json").run_id


def _close(out: Path, status: str, tags: dict, metrics: dict | None = None) -> None:
    """Tag the trial's run with how it ended (a pruned one ends KILLED, as MLflow's UI shows a stopped run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = _run_id(out)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for key, value in (metrics or {}).items():
        if math.isfinite(value):
            client.log_metric(run_id, key, value)
    client.set_terminated(run_id, status)


def _sampler(cfg, seed: int):
    import optuna

    startup = min(10, max(3, cfg.trials // 3))  # random points first, then TPE (constant liar: parallel-aware)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True, multivariate=True)


def _pruner(cfg):
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)
    if cfg.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=3)
    return optuna.pruners.NopPruner()
