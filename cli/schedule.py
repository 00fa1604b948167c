"""`mlops schedule` and `mlops schedule status`: scheduled runs on this machine (flows/deploy.py).

With no `PREFECT_API_URL` they use the project's own Prefect server (started if none is running; scheduler, UI,
database in `.prefect/`), because Prefect's temporary server never fires a schedule.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    schedule = commands.add_parser(
        "schedule", help="register the scheduled deployments and run them until stopped (status: what is scheduled)",
        description="Register the pipeline's deployment (nightly by default) and, if asked, drift checks, batch "
                    "scoring and sweeps beside it, then run their scheduled and triggered runs, one at a time, until "
                    "stopped. `mlops schedule status` shows the deployments, their next run and their last runs.")
    _common(schedule)
    schedule.add_argument("--name", default="nightly-local", help="deployment name (default: nightly-local)")
    schedule.add_argument("--cron", default="0 3 * * *", help="cron schedule, UTC (default: every night at 03:00)")
    schedule.add_argument("--interval", type=float, metavar="SECONDS",
                          help="instead of --cron: every SECONDS, the first run a few seconds after serving starts")
    schedule.add_argument("--no-push", action="store_true", help="do not push data versions to the DVC remote")
    schedule.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="a params.yaml override every scheduled run uses (repeatable), e.g. --set train.epochs=20")
    schedule.add_argument("--drift-url", help="also check this service for drift on --drift-cron, retraining on drift")
    schedule.add_argument("--drift-cron", default="0 * * * *", help="the drift check's schedule (default: hourly)")
    schedule.add_argument("--score-input", metavar="PATH",
                          help="also score this drop folder (or file) with the champion on --score-cron")
    schedule.add_argument("--score-cron", default="30 * * * *", help="batch scoring's schedule (default: hourly, at :30)")
    schedule.add_argument("--sweep-cron", metavar="CRON",
                          help="also run a sweep (params.yaml's sweep section) on this schedule, e.g. '0 4 * * 0'; its "
                               "pick goes through a pipeline run with the pick's overrides (not --set)")
    schedule.add_argument("--missed", choices=("latest", "skip"), default="latest",
                          help="runs that came due while nothing served them: run the latest one (default) or none")
    schedule.set_defaults(run=run_schedule)
    status = schedule.add_subparsers(dest="schedule_command", metavar="[status]").add_parser(
        "status", help="the deployments, their next scheduled run and their last runs")
    _common(status, inherited=True)
    status.add_argument("--runs", type=int, default=5, help="how many recent runs per deployment (default: 5)")
    status.set_defaults(run=run_status)


def _common(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    """--root and --port, on `schedule` and again on `status` (`inherited`: there, given before `status` counts)."""
    default = (lambda value: argparse.SUPPRESS) if inherited else (lambda value: value)
    parser.add_argument("--root", type=Path, default=default(Path.cwd()),
                        help="project root (default: current directory)")
    parser.add_argument("--port", type=int, default=default(4200),
                        help="loopback port of the project's Prefect server, when PREFECT_API_URL is unset "
                             "(default: 4200)")


def run_schedule(args: argparse.Namespace) -> int:
    from flows.deploy import on_project_server, serve_deployments

    root = args.root.resolve()
    return on_project_server(root, args.port, lambda api_url: serve_deployments(args, root, api_url))


def run_status(args: argparse.Namespace) -> int:
    from flows.deploy import on_project_server, show_status

    root = args.root.resolve()
    return on_project_server(root, args.port, lambda api_url: show_status(args, root, api_url))
