"""The stage command line that dvc.yaml calls: `python -m tasks <stage>`; one line per error, a traceback only with --debug."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tasks.errors import PipelineError
from tasks.layout import Layout

STAGES = ("ingest", "prepare", "validate", "train", "evaluate", "compress", "package", "promote")


def run_stage(stage: str, layout: Layout) -> object:
    """Load params.yaml and run one stage with the project's standard paths."""
    from tasks.config import load_params

    params = load_params(layout.params)
    root = layout.root
    if stage == "ingest":
        from tasks.ingest import ingest

        return ingest(params.ingest, root, layout.raw)
    if stage == "prepare":
        from tasks.prepare import prepare

        return prepare(params.prepare, params.base.seed, layout.raw, layout.prepared)
    if stage == "validate":
        from tasks.validate import validate

        return validate(params.validate_, layout.prepared, layout.validation, root=root, experiment=params.base.experiment)
    if stage == "train":
        from tasks.train import train

        return train(params, root, layout.prepared, layout.train)
    if stage == "evaluate":
        from tasks.evaluate import evaluate

        return evaluate(params, root, layout.prepared, layout.train, layout.evaluate)
    if stage == "compress":
        from tasks.compress import compress

        return compress(params, root, layout.prepared, layout.train, layout.compress)
    if stage == "promote":
        from tasks.promote import promote

        return promote(params, root, layout.prepared, layout.evaluate, layout.compress, layout.package, layout.train,
                       layout.promote)
    from tasks.package import package

    return package(params, root, layout.compress, layout.evaluate, layout.train, layout.bento_dir, layout.package,
                   layout.prepared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description="Run one pipeline stage (dvc.yaml calls these).")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: the current directory)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run_stage(args.stage, Layout(args.root.resolve()))
    except PipelineError as err:
        if args.debug:
            raise
        print(f"error in stage {args.stage}: {type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    print(f"{args.stage}: {_summary(result)}")
    return 0


def _summary(result: object) -> str:
    fields = getattr(result, "__dataclass_fields__", {})
    shown = {k: getattr(result, k) for k in fields if k not in ("table", "failures")}
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
