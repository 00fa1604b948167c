"""`mlops drift`: the inputs a running service received, against the training data (jobs/drift.py); with
--retrain, as a Prefect flow (flows/drift.py) that starts the pipeline when they drifted.

Exit code 0: no drift, or too few inputs to judge; 1: drifted; 2: the service could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    drift = commands.add_parser("drift", help="the service's recent inputs against the training data")
    drift.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default: the serving front)")
    drift.add_argument("--root", type=Path, default=Path.cwd(), help="project root, for params.yaml's `drift`")
    drift.add_argument("--json", action="store_true", help="print the report as JSON")
    drift.add_argument("--retrain", action="store_true",
                       help="run the check as a Prefect flow that starts the pipeline when the inputs drifted")
    drift.add_argument("--deployment", help="with --retrain, start retraining through this deployment, e.g. "
                                            "digits-pipeline/nightly (default: the pipeline as a subflow)")
    drift.set_defaults(run=check_drift)


def check_drift(args: argparse.Namespace) -> int:
    from jobs.drift import ServiceUnreadable, check_configured, render

    try:
        if args.retrain:
            from flows.drift import drift_check

            report = drift_check(args.url, str(args.root.resolve()), True, args.deployment)
        else:
            report = check_configured(args.url, args.root)
    except ServiceUnreadable as err:
        print(f"drift: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    if args.retrain and not args.json:
        print(f"retraining: {report.get('retraining', 'not started')}")
    return 1 if report["drifted"] else 0
