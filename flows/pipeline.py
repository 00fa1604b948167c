"""The pipeline as a Prefect flow: each dvc.yaml stage a task, run in DAG order; data pushed to the DVC remote.

One run at a time per workspace (a lock file), stages skipped by DVC's own rule when up to date, transient
failures retried with backoff, each stage under a timeout, a markdown report per run in the Prefect UI.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.dag import (LOCK_FILE, StageFailed, StageRun, changed_stages, push_data, release_dead_locks,
                       repro_stage, stage_order)
from flows.summary import failure_markdown, markdown, summarize
from tasks.common import params_journal
from tasks.common.errors import PipelineError
from tasks.common.tracking import end_orphaned_runs


class WorkspaceBusy(PipelineError):
    """Another pipeline run holds this workspace."""


def _transient(task, task_run, state) -> bool:
    """Retry only what retrying can fix: never bad data, bad params or a refused promotion."""
    error = getattr(state, "data", None)
    return isinstance(error, StageFailed) and error.transient


@task(name="stage", task_run_name="{stage}", retry_condition_fn=_transient)
def run_stage(root: str, stage: str, env: dict[str, str], unchanged: bool = False) -> StageRun:
    """One dvc.yaml stage, skipped by DVC when its deps, params and outs are unchanged.

    `unchanged`: DVC's status already said so and nothing upstream ran, so `dvc repro` would skip it too;
    DVC need not check it again.
    """
    if unchanged:
        get_run_logger().info("%s: up to date", stage)
        return StageRun(stage, executed=False, seconds=0.0)
    result = repro_stage(Path(root), stage, env)
    if result.work_seconds:
        get_run_logger().info("%s: ran in %.1f s (its own work %.1f s)", stage, result.seconds, result.work_seconds)
    else:
        get_run_logger().info("%s: %s in %.1f s", stage, "ran" if result.executed else "up to date", result.seconds)
    return result


@task(name="push data versions", retries=2, retry_delay_seconds=10)
def push(root: str) -> None:
    get_run_logger().info("pushing the data versions to the DVC remote (dvc push)")
    push_data(Path(root))
    get_run_logger().info("data versions pushed")


@task(name="roll out the champion")
def roll_out(root: str, admin_url: str, ready_timeout_s: float) -> dict:
    """Replace the running service with the new champion's Bento, if one was promoted and a front is configured."""
    from flows.rollout import roll_out_champion

    served = roll_out_champion(Path(root), admin_url, ready_timeout_s)
    get_run_logger().info("serving: %s (%s)", served["action"], served["reason"])
    return served


@flow(name="digits-pipeline", log_prints=True)
def pipeline(root: str = ".", push_to_remote: bool = True, overrides: dict[str, Any] | None = None,
             origin: str = "") -> dict:
    """Run every stage of dvc.yaml in order; a failing stage fails the flow run and nothing after it runs.

    `overrides` sets params.yaml keys for this run only, e.g. {"train.epochs": 20, "ingest.source": "idx"};
    `origin` says where they came from (a sweep's trial), on the MLflow run and in the report.
    """
    from filelock import FileLock, Timeout
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run
    from prefect.tasks import exponential_backoff

    from flows import overrides as override
    from tasks.common import stage_host
    from tasks.common.config import load_params

    root_path = Path(root).resolve()
    lock = FileLock(str(root_path / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout as err:
        raise WorkspaceBusy(f"another pipeline run is using {root_path} (it holds {lock.lock_file}); "
                            "this run is refused rather than interleaved with it: wait for it to finish") from err
    stack = ExitStack()
    runs: list[StageRun] = []
    stage = "params"
    try:
        # The stage commands' warm host (tasks/common/stage_host.py): it imports the heavy libraries while the
        # checks below and the first stages run, then each stage forks from it instead of importing them anew.
        # `mlops run` starts it before Prefect is even imported; a run started otherwise starts its own here.
        stack.enter_context(stage_host.for_run(root_path))
        recovered = params_journal.recover(root_path, lock_held=True)  # a killed run's overrides, undone
        if recovered:
            get_run_logger().warning(recovered)
        for left in release_dead_locks(root_path):  # a killed run's DVC stage lock, released
            get_run_logger().warning("released DVC's lock held by a process that is gone: %s", left)
        for ended in end_orphaned_runs(root_path):  # a killed run's MLflow runs, ended KILLED
            get_run_logger().warning("%s", ended)
        with override.applied(root_path / "params.yaml", overrides):
            config = load_params(root_path / "params.yaml")
            knobs = config.pipeline
            stage_task = run_stage.with_options(
                retries=knobs.retries, timeout_seconds=knobs.stage_timeout_minutes * 60,
                retry_delay_seconds=exponential_backoff(backoff_factor=knobs.retry_delay_seconds)(knobs.retries) or 0)
            # Stages record these as lineage tags on the MLflow run (tasks/common/tracking.py).
            env = {"PIPELINE_FLOW_RUN_ID": str(flow_run.id), "PIPELINE_OVERRIDES": json.dumps(overrides or {}),
                   "PIPELINE_ORIGIN": origin}
            changed = changed_stages(root_path)  # one `dvc status`; the rule `dvc repro` applies
            for stage in stage_order(root_path):
                upstream_ran = any(r.executed for r in runs)
                runs.append(stage_task(str(root_path), stage, env, unchanged=stage not in changed and not upstream_ran))
            stage = "push"
            if push_to_remote:
                push(str(root_path))
            stage = "rollout"
            served = roll_out(str(root_path), config.rollout.admin_url, config.rollout.ready_timeout_seconds)
        summary = {**summarize(root_path, runs, served), "origin": origin}
        create_markdown_artifact(key="pipeline-report", markdown=markdown(root_path, summary, overrides),
                                 description="data version, validation, metrics vs champion, promotion, compression, Bento")
        return summary
    except BaseException as err:
        create_markdown_artifact(key="pipeline-report", markdown=failure_markdown(stage, err, runs),
                                 description=f"failed at {stage}")
        raise
    finally:
        stack.close()
        lock.release()
