"""Scheduled runs on one machine: `mlops schedule` (cli/schedule.py) registers the deployments and runs them.

With no `PREFECT_API_URL` it starts the project's own Prefect server first (flows/prefect_server.py: scheduler,
UI, database in `.prefect/`), because Prefect's temporary server never fires a schedule; with `PREFECT_API_URL`
set it uses that server. `--drift-url` adds the drift check (flows/drift.py), which triggers the pipeline's
deployment when the served inputs drifted; `--score-input` adds batch scoring of a drop folder (flows/score.py) and
`--sweep-cron` a sweep (flows/sweep.py), whose pick goes through a pipeline run. One run at a time: a sweep and
the nightly run never compete for the cores. `mlops schedule status` shows the deployments, their next
scheduled run and their last runs. For a team, prefect.yaml declares the same deployments for a work pool.

Missed runs: a schedule that came due while nothing was serving it (machine off, process stopped) gets one
catch-up run when serving starts again, the latest missed one; older missed runs are cancelled with a message
saying so (`--missed skip` cancels them all).
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Callable
from pathlib import Path

from tasks.common.errors import ConfigError


def on_project_server(root: Path, port: int, command: Callable[[str], int]) -> int:
    """`command(api_url)` against `PREFECT_API_URL` when it is set, else against the project's own Prefect server
    (the running one, or one started for as long as the command runs)."""
    if os.environ.get("PREFECT_API_URL"):
        return command(os.environ["PREFECT_API_URL"])
    from flows.prefect_server import STATE_DIR, project_server

    with project_server(root, port) as server:
        os.environ["PREFECT_API_URL"] = server.api_url  # the flow runs the runner starts inherit it
        origin = "started" if server.started_here else "already running"
        print(f"Prefect server ({origin}): UI {server.ui_url}, database {root / STATE_DIR / 'prefect.db'}", flush=True)
        return command(server.api_url)


def serve_deployments(args: argparse.Namespace, root: Path, api_url: str) -> int:
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.overrides import checked, parse_assignment
    from flows.pipeline import pipeline

    overrides = checked(root / "params.yaml", dict(parse_assignment(item) for item in args.set)) or None
    parameters = {"root": str(root), "push_to_remote": not args.no_push, "overrides": overrides}
    deployments = [pipeline.to_deployment(name=args.name, schedule=_schedule(args), parameters=parameters)]
    if args.drift_url:
        from flows.drift import drift_check

        deployments.append(drift_check.to_deployment(
            name=f"{args.name}-drift", cron=args.drift_cron,
            parameters={"url": args.drift_url, "root": str(root), "retrain": True,
                        "retrain_deployment": f"{pipeline.name}/{args.name}"}))
    if args.score_input:
        from flows.score import score_batch

        deployments.append(score_batch.to_deployment(
            name=f"{args.name}-score", cron=args.score_cron,
            parameters={"input": str(Path(args.score_input).resolve()), "root": str(root),
                        "push_to_remote": not args.no_push}))
    if args.sweep_cron:
        from flows.sweep import sweep_flow

        deployments.append(sweep_flow.to_deployment(
            name=f"{args.name}-sweep", cron=args.sweep_cron,
            parameters={"root": str(root), "push_to_remote": not args.no_push}))
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for line in settle_missed_runs([f"{d.flow_name}/{d.name}" for d in deployments], args.missed == "latest"):
            print(line, flush=True)
        # Schedules stay active when this process stops: runs that come due meanwhile are the missed runs above.
        serve(*deployments, limit=1, pause_on_shutdown=False)
    return 0


FIRST_INTERVAL_RUN_S = 10  # Prefect's scheduler picks up a new or changed deployment within about 5 s


def _schedule(args: argparse.Namespace):
    """The pipeline's schedule: --cron, or every --interval seconds anchored just after now (so the first run
    comes in seconds, not one whole interval later)."""
    from prefect.schedules import Cron, Interval

    if args.interval is None:
        return Cron(args.cron, timezone="UTC")
    if args.interval < 1:
        raise ConfigError(f"--interval must be at least 1 second; got {args.interval:g}")
    first = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=FIRST_INTERVAL_RUN_S)
    return Interval(datetime.timedelta(seconds=args.interval), anchor_date=first, timezone="UTC")


def describe_schedule(schedule) -> str:
    """A deployment's schedule as a person reads it: the cron line, or `every N s`."""
    if getattr(schedule, "cron", None):
        return schedule.cron
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval.total_seconds():g} s"
    return str(schedule)


def settle_missed_runs(deployments: list[str], keep_latest: bool) -> list[str]:
    """Cancel the auto-scheduled runs of `deployments` that came due while nothing served them, all but the latest
    one when `keep_latest`: a machine that was off for a week catches up once, not seven times."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterNextScheduledStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled

    now = datetime.datetime.now(datetime.timezone.utc)
    said = []
    with get_client(sync_client=True) as client:
        for name in deployments:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue  # first time served: nothing can have been missed
            due = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                    next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=now)),
                sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC)
            missed = [run for run in due if run.auto_scheduled]
            for run in missed[:-1] if keep_latest else missed:
                client.set_flow_run_state(run.id, Cancelled(
                    message=f"missed: due {run.expected_start_time:%Y-%m-%d %H:%M} UTC while nothing served "
                            f"{name}; " + ("a later missed run was run instead" if keep_latest else "--missed skip")),
                    force=True)
            if missed:
                kept = f"; catching up with the one due {missed[-1].expected_start_time:%Y-%m-%d %H:%M} UTC now" \
                    if keep_latest else ""
                said.append(f"{name}: {len(missed)} scheduled run(s) were missed while nothing served them{kept}")
    return said


def show_status(args: argparse.Namespace, root: Path, api_url: str) -> int:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        print(render_status(read_status(args.runs)))
    return 0


def read_status(runs: int = 5) -> list[dict]:
    """Each deployment on the server: its schedules, whether they are active, its next scheduled run, its last runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    rows = []
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            of_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            upcoming = client.read_flow_runs(
                deployment_filter=of_it, limit=1, sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
            recent = client.read_flow_runs(
                deployment_filter=of_it, limit=runs, sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED]))))
            rows.append({
                "name": f"{client.read_flow(deployment.flow_id).name}/{deployment.name}",
                "schedules": [describe_schedule(s.schedule) for s in deployment.schedules if s.active],
                "paused": deployment.paused,
                "next": upcoming[0].expected_start_time if upcoming else None,
                "runs": [{"name": r.name, "state": r.state.name if r.state else "?", "scheduled": r.auto_scheduled,
                          "start": r.start_time or r.expected_start_time, "seconds": r.total_run_time.total_seconds()}
                         for r in recent],
            })
    return rows


def render_status(rows: list[dict]) -> str:
    if not rows:
        return "No deployments on this server: start serving with `mlops schedule`."
    lines = []
    for row in rows:
        when = f"{row['next']:%Y-%m-%d %H:%M:%S} UTC" if row["next"] else "none scheduled"
        lines += [f"{row['name']}", f"  schedule:  {', '.join(row['schedules']) or 'none'} (UTC)"
                  f"{'  PAUSED' if row['paused'] else ''}", f"  next run:  {when}"]
        lines.append("  last runs: " + ("none yet" if not row["runs"] else ""))
        lines += [f"    {r['start']:%Y-%m-%d %H:%M:%S} UTC  {r['state']:<10} {'scheduled' if r['scheduled'] else 'triggered':<9}"
                  f"  {r['name']} ({r['seconds']:.0f} s)" for r in row["runs"]]
    return "\n".join(lines)

