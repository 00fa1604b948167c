"""`mlops` / `python -m cli`: one program, a subcommand per job (see cli/__init__.py)."""

from __future__ import annotations

import argparse
import os
import sys

from cli import drift, jobs, pipeline, registry, reproduce, schedule, serving

COMMANDS = (pipeline, jobs, schedule, registry, serving, drift, reproduce)  # the order `mlops --help` lists them


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="mlops", description="Run the pipeline, its jobs and its schedules; operate the registry and the service.",
        epilog="`mlops COMMAND --help` for a command's options. Errors are one line and an exit code; --debug shows "
               "the traceback.")
    main_parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_commands(commands)
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # as flows/__init__.py: MLflow's INFO is its chatter
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"mlops {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place every command's unexpected error becomes one line
        if args.debug:
            raise
        from tasks.common.errors import PipelineError

        code = err.exit_code if isinstance(err, PipelineError) else 1
        print(f"mlops {args.command}: {type(err).__name__}: {err}"
              + ("" if isinstance(err, PipelineError) else " (run again with --debug for the traceback)"),
              file=sys.stderr)
        return code


def run() -> None:
    """`mlops` as a person types it: main(), then the exit Python makes minus its last step.

    Non-daemon threads are joined (Prefect sends its last logs and events from hooks there) and the exit handlers
    run (MLflow ends its runs, logging flushes, temporary folders go, the command's Prefect server is stopped),
    then the process ends without tearing down each of the thousands of modules MLflow and Prefect import one by
    one: that last step took 0.8 s of every command that ran a flow here, and leaves nothing for anyone."""
    import atexit
    import threading

    code = main()
    threading._shutdown()  # noqa: SLF001 - what interpreter exit calls first; no public name for it
    atexit._run_exitfuncs()  # noqa: SLF001 - and second
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
