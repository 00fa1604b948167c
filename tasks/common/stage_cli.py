"""The command line every stage shares: `python -m tasks.<stage>`, what dvc.yaml runs.

It loads params.yaml, runs the stage's `run(params, layout)`, prints a one-line summary, and turns a pipeline
error into a one-line message and its exit code (the traceback only with --debug). With PIPELINE_OUTCOME_FILE
set (the Prefect flow sets it for each stage), the outcome is also written there as JSON (the result's figures,
or the error's class, message and whether retrying can help), so the flow never parses printed text.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tasks.common.errors import PipelineError, ResourceUnavailable, TrackingServerLost
from tasks.common.layout import Layout
from tasks.common.outputs import OUTCOME_ENV, StageOutcome


def main(stage: str, run: Callable, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: the current directory)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on error")
    args = parser.parse_args(argv)
    _configure_logging()
    layout = Layout(args.root.resolve())
    from tasks.common.params_journal import recover

    recovered = recover(layout.root)  # under `dvc repro` alone: a killed run's overrides undone before it reads them
    if recovered:
        logging.getLogger(__name__).warning("%s", recovered)
    from tasks.common.tracking import end_orphaned_runs

    for ended in end_orphaned_runs(layout.root):  # and its MLflow runs ended KILLED
        logging.getLogger(__name__).warning("%s", ended)
    began = time.perf_counter()
    try:
        from tasks.common.config import load_params

        result = run(load_params(layout.params), layout)
    except KeyboardInterrupt:  # a Ctrl-C, or the run stopping it: the flow must not retry it
        _record(StageOutcome(stage=stage, ok=False, error="KeyboardInterrupt", message="interrupted", retryable=False))
        raise
    except Exception as crash:  # noqa: BLE001 - a named error, a full disk, or a crash (raised: retryable)
        err = crash if isinstance(crash, PipelineError) else full_disk(layout, crash) or lost_server(crash)
        if err is None:  # a crash: its traceback below, and its first line for the flow's message
            _record(StageOutcome(stage=stage, ok=False, error=type(crash).__name__,
                                 message=(str(crash).splitlines() or [""])[0][:500], retryable=True))
            raise
        _record(StageOutcome(stage=stage, ok=False, error=type(err).__name__, message=str(err),
                             retryable=err.retryable))
        if args.debug:
            raise
        print(f"error in stage {stage}: {type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    figures = _figures(result)
    _record(StageOutcome(stage=stage, ok=True, result=figures, seconds=time.perf_counter() - began))
    print(f"{stage}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return 0


FULL_BYTES = 2**20  # a folder the stage writes with less free space than this: its disk is full


def full_disk(layout: Layout, crash: Exception) -> ResourceUnavailable | None:
    """A crash that a full disk caused, named as such: ENOSPC/EDQUOT, or any error (torch, pyarrow and SQLite word
    it their own way) while a folder the stage writes has less than FULL_BYTES free. None for any other crash."""
    import errno
    import shutil

    stage_folders = sorted(p for p in (layout.root / "artifacts").glob("*") if p.is_dir())
    folders = [layout.root, layout.root / "data", *stage_folders]
    named = isinstance(crash, OSError) and crash.errno in (errno.ENOSPC, errno.EDQUOT)
    for folder in ([Path(crash.filename).parent] if named and crash.filename else []) + folders:
        try:
            usage = shutil.disk_usage(folder)
        except OSError:
            continue
        if named or usage.free < FULL_BYTES:
            said = str(crash).splitlines()[0][:200] if str(crash) else ""
            return ResourceUnavailable(
                f"no space left on the disk holding {folder} ({usage.free / 2**20:.1f} MB free of "
                f"{usage.total / 2**20:,.1f} MB): {type(crash).__name__}: {said}. Nothing half-written was kept; "
                "free some space, then run again: it finishes the job")
    return None


def lost_server(crash: Exception) -> TrackingServerLost | None:
    """A crash because the MLflow tracking server (MLFLOW_TRACKING_URI, http) did not answer, named as such."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return None
    chain, seen = [], crash
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    signs = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection", "Read timed out",
             "Connection aborted", "RemoteDisconnected")
    words = next((str(e) for e in chain if any(sign in str(e) for sign in signs)), None)
    if words is None:
        return None
    reason = next((sign for sign in signs if sign in words), "no answer")
    return TrackingServerLost(f"the MLflow tracking server at {uri} did not answer ({reason}): the stage stopped "
                              "without writing its outputs; it runs again once the server is back")


OWN_LOGGERS = ("tasks", "bento", "front")  # the project's loggers (module names, and the serving front's)


def _configure_logging() -> None:
    """The project's own INFO lines; only warnings and errors from the libraries (Great Expectations alone logs
    hundreds of INFO lines per validation, MLflow its database migrations)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level on import, from this
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def _figures(result: object) -> dict:
    """The result's small fields (a long table or a list of failures stays in the stage's own files)."""
    if not dataclasses.is_dataclass(result):
        return {}
    long = ("table", "failures", "checks")
    shown = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in long}
    return {k: v.item() if hasattr(v, "item") else v for k, v in shown.items()}  # NumPy scalars as Python numbers


def _record(outcome: StageOutcome) -> None:
    path = os.environ.get(OUTCOME_ENV)
    if path:
        outcome.write(Path(path))
