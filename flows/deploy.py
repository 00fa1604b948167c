"""Scheduled runs on one machine: `python -m flows.deploy serve` registers a cron deployment and runs it in-process.

With `--drift-url`, a second deployment checks the service there for drift every hour and, when its inputs
drifted, triggers the pipeline's deployment (flows/drift.py). For a team, `prefect.yaml` declares both as
deployments to a work pool (see README: Scheduling).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="create the deployment and run its scheduled (and triggered) runs until stopped")
    serve.add_argument("--name", default="nightly-local", help="deployment name (default: nightly-local)")
    serve.add_argument("--cron", default="0 3 * * *", help="cron schedule, UTC (default: every night at 03:00)")
    serve.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: the current directory)")
    serve.add_argument("--no-push", action="store_true", help="do not push data versions to the DVC remote")
    serve.add_argument("--drift-url", help="also check this service for drift on --drift-cron, retraining on drift")
    serve.add_argument("--drift-cron", default="0 * * * *", help="the drift check's schedule (default: hourly)")
    args = parser.parse_args(argv)

    from prefect import serve as serve_all

    from flows.pipeline import pipeline

    root = str(args.root.resolve())
    deployments = [pipeline.to_deployment(name=args.name, cron=args.cron,
                                          parameters={"root": root, "push_to_remote": not args.no_push})]
    if args.drift_url:
        from flows.drift import drift_check

        deployments.append(drift_check.to_deployment(
            name=f"{args.name}-drift", cron=args.drift_cron,
            parameters={"url": args.drift_url, "root": root, "retrain": True,
                        "retrain_deployment": f"digits-pipeline/{args.name}"}))
    serve_all(*deployments, limit=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
