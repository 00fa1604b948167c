"""`mlops drift`: the inputs a running service received, against the training data (tasks/ops/drift.py).

Exit code 0: no drift, or too few inputs to judge; 1: drifted; 2: the service could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every drift command takes (this one and `python -m flows.drift`)."""
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default: the serving front)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root, for params.yaml's `drift`")


def add_commands(commands: argparse._SubParsersAction) -> None:
    drift = commands.add_parser("drift", help="the service's recent inputs against the training data")
    add_arguments(drift)
    drift.add_argument("--json", action="store_true", help="print the report as JSON")
    drift.set_defaults(run=check_drift)


def check_drift(args: argparse.Namespace) -> int:
    from tasks.ops.drift import ServiceUnreadable, check_configured, render

    try:
        report = check_configured(args.url, args.root)
    except ServiceUnreadable as err:
        print(f"drift: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if report["drifted"] else 0
