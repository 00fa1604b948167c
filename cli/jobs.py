"""`mlops score` and `mlops sweep`: the jobs that are not stages, each as a Prefect flow (flows/score.py,
flows/sweep.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser(
        "score", help="score new data with the champion's shipped model; the output versioned and tracked",
        description="Score a table, an image folder or a drop folder of tables with the champion's shipped model "
                    "(or --model), write a versioned output under score.output, track it with DVC and MLflow. "
                    "Exit codes: 0 scored or already scored, 2 bad input, 3 no model to score with.")
    score.add_argument("--input", required=True, help="a CSV, TSV or Parquet file, a folder of PNG/JPEG images, a "
                                                      "folder with images.npy or IDX files, or a drop folder of table "
                                                      "files (each scored once)")
    score.add_argument("--root", type=Path, default=Path.cwd(), help="the project (params.yaml, MLflow store, DVC)")
    score.add_argument("--model", help="a BentoML model NAME:VERSION (default: the champion's)")
    score.add_argument("--address", help="a Dask scheduler (tcp://host:8786), or `local` to start one here; "
                                         "default: score in this process")
    score.add_argument("--no-push", action="store_true", help="track the output with DVC but do not push it")
    score.set_defaults(run=run_score)

    sweep = commands.add_parser(
        "sweep", help="a parallel hyperparameter and compression search; its pick goes through the gate",
        description="Run the Optuna study over sweep.space on the validated data version, then a pipeline run with "
                    "the picked trial's overrides, which the gate decides. Exit codes: 0 done, 1 the pipeline run "
                    "failed, 2 bad params or data.")
    sweep.add_argument("--trials", type=int, default=0, help="finished trials to reach (default: sweep.trials)")
    sweep.add_argument("--parallel", type=int, default=0, help="trials at once (default: sweep.parallel)")
    sweep.add_argument("--address", help="a Dask scheduler (tcp://host:8786); default: a local cluster of "
                                         "--parallel workers (in this process when 1)")
    sweep.add_argument("--name", default="", help="the study (default: from the data version and the search space; "
                                                  "the same name continues a killed or finished sweep)")
    sweep.add_argument("--root", type=Path, default=Path.cwd(), help="the project (params.yaml, data, MLflow store)")
    sweep.add_argument("--no-pipeline", action="store_true", help="search only: no pipeline run with the pick")
    sweep.add_argument("--no-push", action="store_true", help="the pipeline run does not push data to the remote")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a sweep.* key for this sweep only (repeatable), e.g. --set sweep.objectives=[accuracy]")
    sweep.set_defaults(run=run_sweep, parser=sweep)


@contextmanager
def flow_server(root: Path) -> Iterator:
    """The Prefect server this command's flow runs are tracked on, set before Prefect is imported: the user's, the
    project's own while it runs, else the project's started now and kept for the next commands, or one of the
    command's own (flows/prefect_server.py `for_command`).
    Run the flow inside its `.ready()`."""
    from flows.prefect_server import IDLE_ENV, for_command, idle_minutes

    with for_command(root.resolve()) as server:
        if server.origin == "project":
            print(f"flow runs tracked on the project's Prefect server: {server.api_url.removesuffix('/api')}",
                  file=sys.stderr)
        elif server.origin == "kept":
            print(f"flow runs tracked on the project's Prefect server, starting now: "
                  f"{server.api_url.removesuffix('/api')} (kept for the next commands until unused for "
                  f"{idle_minutes():g} min: {IDLE_ENV}; database: .prefect/)", file=sys.stderr)
        elif server.origin == "command":
            print(f"flow runs tracked on a Prefect server started for this command ({server.api_url}; its database: "
                  "PREFECT_HOME; `mlops schedule` keeps one running)", file=sys.stderr)
        yield server


HANDED_OFF = "MLOPS_HANDED_OFF"  # set in a command a warm host runs: it does not hand itself off again


def in_warm_host(root: Path) -> int | None:
    """While `mlops schedule` runs this project's Prefect server: this command run by a fork of the warm host that
    server keeps (flows/prefect_server.py `command_host`), its libraries imported once there, as a pipeline run's
    stages are (tasks/common/stage_host.py); the command's exit status. None: run it here (no host, or one started
    with other import-time settings, which it says)."""
    import os

    from flows.prefect_server import command_host
    from tasks.common.stage_host import hand_off

    if os.environ.get(HANDED_OFF):
        print("run by the warm host of the project's Prefect server (its libraries imported once)", file=sys.stderr)
        return None
    address = command_host(root)
    if address is None:
        return None
    os.environ[HANDED_OFF] = "1"
    code = hand_off("cli", address)
    if code is None:
        del os.environ[HANDED_OFF]
    return code


def run_score(args: argparse.Namespace) -> int:
    handed = in_warm_host(args.root)
    if handed is not None:
        return handed
    with flow_server(args.root) as server:
        from flows.score import render, score_batch
        from tasks.common.errors import DataError
        from jobs.score import prepare
        from jobs.score.model import NoModel, import_libraries

        prepare(Path(args.input), args.root, args.address)  # a large input's worker processes start, and
        import_libraries()  # the libraries are imported, while the server boots
        try:
            with server.ready():
                results = score_batch(args.input, str(args.root.resolve()), args.model, args.address,
                                      push_to_remote=not args.no_push)
        except DataError as err:
            print(f"scoring stopped: {err}", file=sys.stderr)
            return 2
        except NoModel as err:
            print(f"no model to score with: {err}", file=sys.stderr)
            return 3
    rejected = [result for result in results if result.get("rejected")]
    scored = [result for result in results if not result.get("rejected")]
    if scored:
        print("\n".join(render(result) for result in scored))
    for result in rejected:  # a drop folder's other files were scored; exit 2 says some were not
        print(f"scoring stopped: {result['rejected']}" if len(results) == 1 else f"not scored: {result['rejected']}",
              file=sys.stderr)
    return 2 if rejected else 0


def run_sweep(args: argparse.Namespace) -> int:
    from flows.overrides import parse_assignment

    settings = dict(parse_assignment(item) for item in args.set)
    if args.trials < 0 or args.parallel < 0:
        args.parser.error("--trials and --parallel must be positive")
    with flow_server(args.root) as server:
        from flows.dag import StageFailed
        from flows.sweep import DataNotReady, render, sweep_flow
        from tasks.common.errors import ConfigError, PipelineError
        from tasks.common.params_journal import recover

        recovered = recover(args.root.resolve())  # trials read params.yaml: a killed run's overrides undone first
        if recovered:
            print(recovered)

        try:
            with server.ready():
                outcome = sweep_flow(str(args.root.resolve()), args.trials, args.parallel, args.address, args.name,
                                     run_pipeline=not args.no_pipeline, push_to_remote=not args.no_push,
                                     settings=settings)
        except (ConfigError, DataNotReady) as err:
            print(f"sweep refused: {err}", file=sys.stderr)
            return 2
        except (PipelineError, StageFailed) as err:
            print(f"sweep failed: {err}", file=sys.stderr)
            return 1
    print(render(outcome["sweep"]))
    if outcome["pipeline"]:
        from flows.summary import render as render_pipeline

        print(render_pipeline(outcome["pipeline"]))
    return 0
