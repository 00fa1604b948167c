"""Scheduled runs on one machine: `python -m flows.deploy serve` registers a cron deployment and runs it in-process.

For a team, `prefect.yaml` declares the same flow as a deployment to a work pool (see README: Scheduling).
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
    args = parser.parse_args(argv)

    from flows.pipeline import pipeline

    pipeline.serve(name=args.name, cron=args.cron, limit=1,
                   parameters={"root": str(args.root.resolve()), "push_to_remote": not args.no_push})
    return 0


if __name__ == "__main__":
    sys.exit(main())
