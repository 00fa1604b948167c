"""Batch scoring as a Prefect flow: new data through the champion's shipped model, validated, versioned, tracked.

    mlops score --input PATH [--address local|tcp://host:8786] [--model NAME:VERSION]

Scores PATH (a CSV, TSV or Parquet table, or a folder of PNG/JPEG images) with the model the champion's Bento
serves (jobs/score/), on a Dask cluster when given its address; writes a versioned output under
`score.output`, tracks it with DVC (and pushes it to the remote), logs an MLflow run (experiment
`<experiment>-scoring`) and a Prefect report. The `score` deployment in prefect.yaml runs it on a schedule
over a drop folder. Exit codes: 0 scored or already scored, 2 bad input (too many bad rows, wrong columns,
nothing to read), 3 no model to score with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task


@task(name="score")
def score_input(input: str, root: str, model: str | None, address: str | None) -> dict:
    from tasks.common.config import load_params
    from jobs.score import score
    from jobs.score.model import champion_model, stored_model

    from tasks.common.errors import DataError

    params = load_params(Path(root) / "params.yaml")
    shipped = stored_model(model) if model else champion_model(Path(root), params)
    try:
        result = score(Path(input), shipped, Path(root), params.score, params.package.max_image_pixels, address,
                       params.package.max_text_chars)
    except DataError as err:  # this input is bad: set aside with its reason, the others are still scored
        return {"input": input, "rejected": str(err)[:2000]}
    return vars(result)


@task(name="track")
def track(result: dict, root: str, push_to_remote: bool) -> dict:
    """The output version under DVC (pushed to the default remote) and an MLflow run."""
    from types import SimpleNamespace

    from tasks.common.config import load_params
    from jobs.score.tracking import log_run

    output = Path(result["output"])
    tracked = {}
    if not output.is_relative_to(Path(root).resolve()):
        tracked["dvc"] = f"not tracked: {output} lies outside the project (score.output)"
    elif (Path(root) / ".dvc").is_dir():
        from dvc.repo import Repo

        with Repo(root) as repo:  # as `dvc add -q` does it, without a second interpreter and its imports (0.5 s)
            repo.scm_context.quiet = True  # no "git add ..." hint: the report names the .dvc file
            repo.add(str(output))
        tracked["dvc"] = str(output.with_name(output.name + ".dvc").relative_to(Path(root).resolve()))
        if push_to_remote:
            subprocess.run([sys.executable, "-m", "dvc", "push", "-q", tracked["dvc"]], cwd=root, check=True)
            tracked["pushed"] = True
    params = load_params(Path(root) / "params.yaml")
    tracked["mlflow_run"] = log_run(Path(root), params.base.experiment, SimpleNamespace(**result))
    return tracked


@flow(name="score", log_prints=True)
def score_batch(input: str, root: str = ".", model: str | None = None, address: str | None = None,
                push_to_remote: bool = True) -> list[dict]:
    """Score `input` with the champion's model (or `model`), on `address` (a Dask scheduler, or `local`). A drop
    folder of table files is scored file by file (each its own version; those already scored are skipped)."""
    from prefect.artifacts import create_markdown_artifact

    root = str(Path(root).resolve())
    results = []
    for one in inputs_in(Path(input).resolve()):
        result = score_input(str(one), root, model, address)
        if result.get("rejected"):
            get_run_logger().warning("not scored: %s", result["rejected"])
        elif result["already_scored"]:
            get_run_logger().info("already scored: %s with %s v%s → %s (nothing to do)", one, result["model"]["name"],
                                  result["model"]["version"], result["output"])
        else:
            result["tracked"] = track(result, root, push_to_remote)
            create_markdown_artifact(key="score-report", markdown=render(result), description=_headline(result))
        results.append(result)
    return results


def inputs_in(path: Path) -> list[Path]:
    """`path` itself, or for a folder holding table files (and no images) each of those files, in name order."""
    from jobs.score.reader import IMAGE_SUFFIXES, TABLE_SUFFIXES

    from jobs.score.reader import readable

    if not path.is_dir():
        return [path]
    tables = sorted(path / name for name in os.listdir(path) if not name.startswith(".")
                    and os.path.splitext(name)[1].lower() in TABLE_SUFFIXES and readable(path / name, path))
    if tables and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
        return tables
    return [path]


def _headline(result: dict) -> str:
    return (f"{result['scored']} of {result['rows']} rows scored, {result['quarantined']} quarantined, with "
            f"{result['model']['name']} v{result['model']['version']} ({result['model']['variant']})")


def render(result: dict) -> str:
    """The run's report (Prefect artifact, and the end-of-run summary)."""
    if result.get("rejected"):
        return f"# Not scored: {result['input']}\n\n{result['rejected']}\n"
    drift = result.get("drift") or {}
    lines = [f"# Batch scoring of {result['input']}", "", _headline(result), "",
             f"- output: `{result['output']}` (predictions.parquet, quarantine.parquet, summary.json)"
             + (" — already scored, nothing written" if result.get("already_scored") else ""),
             f"- input digest: `{result['input_digest']}`",
             f"- engine: {result['engine']}, {result['chunks']} chunks ({result['resumed_chunks']} resumed), "
             f"{result['seconds']} s",
             f"- imputed cells: {result['imputed_cells']}"]
    if result.get("tracked"):
        lines.append(f"- tracked: {json.dumps(result['tracked'])}")
    if result["reasons"]:
        lines += ["", "| quarantined because | rows |", "|---|---|"] + [f"| {r} | {n} |" for r, n in result["reasons"].items()]
    if drift:
        lines += ["", f"Drift against {drift['data_version']}: worst `{drift['worst']}` moved {drift['score']:.2f} "
                  f"training std devs (limit {drift['max_shift']}): {'**drifted**' if drift['drifted'] else 'no drift'}"]
    lines += ["", "| class | share |", "|---|---|"] + [f"| {c} | {s:.1%} |" for c, s in result["class_shares"].items()]
    return "\n".join(lines) + "\n"
