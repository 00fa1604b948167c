"""`mlops run`: the whole pipeline as a Prefect flow (flows/pipeline.py), on the bundled data or on yours."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="the whole pipeline as a Prefect flow: every stage DVC finds out of date",
                              description="Run every dvc.yaml stage that is out of date as one Prefect flow run, "
                                          "push the data versions and roll the champion out to a serving front.")
    run.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: current directory)")
    run.add_argument("--data", metavar="PATH",
                     help="train on this data from now on (written to params.yaml): a CSV/TSV/Parquet table, a folder "
                          "of class sub-folders of images, IDX files, or images.npy + labels.npy")
    run.add_argument("--label", metavar="COLUMN", help="with --data, a table's class column (default: the first "
                                                       "column named label, target, class, y, ...)")
    run.add_argument("--new-dataset", action="store_true",
                     help="accept a dataset with other classes, columns or image shape than the last accepted one "
                          "(archives its data contract)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a params.yaml key for this run only (repeatable), e.g. --set train.epochs=20")
    run.add_argument("--no-push", action="store_true", help="do not push data versions to the DVC remote")
    run.add_argument("--force-flow", action="store_true",
                     help="start a Prefect flow run even when DVC reports nothing to do")
    run.set_defaults(run=run_pipeline, parser=run)


def run_pipeline(args: argparse.Namespace) -> int:
    from flows.overrides import parse_assignment

    overrides = dict(parse_assignment(item) for item in args.set)  # a ConfigError: one line, exit 2 (cli/__main__)
    if args.label and not args.data:
        args.parser.error("--label goes with --data")
    root = args.root.resolve()
    from tasks.common.params_journal import recover

    recovered = recover(root)  # before anything reads params.yaml: a killed run's overrides, undone
    if recovered:
        print(recovered)
    if overrides:
        from flows.overrides import checked

        checked(root / "params.yaml", overrides)  # an unknown or ill-typed key: refused before anything starts
    if args.data:
        from flows.dataset import adopt

        for key, value in adopt(root, args.data, args.label).items():
            print(f"params.yaml: {key} = {value!r}")
    if args.new_dataset:
        from flows.dataset import forget_contract

        archived = forget_contract(root)
        print(f"data contract archived to {archived}" if archived else "no data contract yet: nothing to archive")
    from flows.dag import StageRun, nothing_to_do, stage_order
    from flows.summary import render, summarize

    if not overrides and not args.force_flow and nothing_to_do(root, push=not args.no_push):
        # The rule the flow applies stage by stage, checked once: Prefect is not started just to skip every stage.
        print("Everything up to date (dvc status clean, data versions pushed): no stage runs, no flow run is started.")
        print(render(summarize(root, [StageRun(stage, False, 0.0) for stage in stage_order(root)])))
        return 0
    from cli.jobs import flow_server
    from flows.dag import stages_to_run
    from tasks.common.stage_host import for_run

    with flow_server(root) as server:  # booting while the stages are told, and their warm host imports what they need
        with for_run(root, stages_to_run(root, overrides)):
            summary = _flow(root, args, overrides, server)
    if summary is None:
        return 1
    print(render(summary))
    return 0


def _flow(root: Path, args: argparse.Namespace, overrides: dict, server) -> dict | None:
    """The pipeline flow run, tracked on `server` (cli/jobs.py `flow_server`); None when it failed (said on
    stderr)."""
    from bento.front.supervisor import BackendFailed
    from flows.dag import StageFailed
    from flows.pipeline import pipeline
    from tasks.common.errors import PipelineError

    try:
        with server.ready():
            return pipeline(root=str(root), push_to_remote=not args.no_push, overrides=overrides or None)
    except (PipelineError, StageFailed, BackendFailed) as err:
        print(f"pipeline failed: {err}", file=sys.stderr)
        return None
