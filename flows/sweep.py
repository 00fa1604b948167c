"""A sweep as a Prefect flow: search, then hand the picked trial to a normal pipeline run, which gates it.

    mlops sweep [--trials N] [--parallel K] [--address tcp://host:8786] [--name NAME] [--no-pipeline]
                          [--set sweep.KEY=VALUE ...]

Runs the Optuna study over `sweep.space` (jobs/sweep/) on the validated data version, K trials at a time on
a local Dask cluster (or the one at --address); a killed sweep started again with the same name continues.
The picked trial's parameters then become the overrides of a pipeline run (flows/pipeline.py) on the same data
version: validate, the paired gate, compress, package and the serving check decide, as for any run. The sweep
itself registers and promotes nothing. Exit codes: 0 done, 1 the pipeline run failed, 2 bad params or data.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task

from tasks.common.errors import ConfigError, PipelineError

DATA_STAGES = ("ingest", "prepare", "validate")


class DataNotReady(PipelineError):
    """The data version is not validated, or changed since the sweep searched it."""


def validated_data(root: Path, digest: str = "") -> None:
    """The data stages are up to date (the version in data/prepared passed validate) and, given `digest`, the
    prepared data is the version the sweep searched on."""
    from flows.dag import changed_stages
    from tasks.common.layout import Layout
    from jobs.sweep import data_digest

    stale = sorted(set(DATA_STAGES) & changed_stages(root))
    if stale or not (Layout(root).validation / "report.json").is_file():
        raise DataNotReady(f"the data is not a validated version yet ({', '.join(stale) or 'never validated'} out of "
                           "date): run the pipeline first (make run), so that trials train on validated data")
    if digest and data_digest(Layout(root).prepared) != digest:
        raise DataNotReady("the prepared data changed since the sweep searched it: its pick is not valid for this "
                           "version; run the sweep again (the same command starts a study of the new data)")


@task(name="search")
def search(root: str, trials: int, parallel: int, address: str | None, name: str, settings: dict | None) -> dict:
    from tasks.common.config import load_params, with_overrides
    from tasks.common.layout import Layout
    from jobs.sweep import sweep

    layout = Layout(Path(root))
    validated_data(layout.root)
    params = with_overrides(load_params(layout.params), settings or {})
    result = sweep(params, layout.root, layout.prepared, layout.sweeps, trials, parallel, address, name)
    return vars(result)


@flow(name="sweep", log_prints=True)
def sweep_flow(root: str = ".", trials: int = 0, parallel: int = 0, address: str | None = None, name: str = "",
               run_pipeline: bool = True, push_to_remote: bool = True, settings: dict | None = None) -> dict:
    """Search (`trials`, `parallel`: params.yaml's sweep section when 0), then run the pipeline with the picked
    trial's overrides on the same data version, unless `run_pipeline` is false. `settings`: sweep.* keys for this
    sweep only, e.g. {"sweep.objectives": ["accuracy"]}."""
    if any(not key.startswith("sweep.") for key in settings or {}):
        raise ConfigError(f"settings {sorted(settings)}: only sweep.* keys (the pipeline run gets the pick alone)")
    from prefect.artifacts import create_markdown_artifact

    from flows.pipeline import pipeline

    root = str(Path(root).resolve())
    result = search(root, trials, parallel, address, name, settings)
    create_markdown_artifact(key="sweep-report", markdown=render(result), description=_headline(result))
    picked = result["picked"]
    if not run_pipeline or picked is None:
        get_run_logger().info("no pipeline run: %s", "--no-pipeline" if picked else "no feasible trial")
        return {"sweep": result, "pipeline": None}
    validated_data(Path(root), result["data_digest"])
    origin = f"sweep {result['name']}, trial {picked['trial']} (MLflow parent run {result['parent_run_id']})"
    summary = pipeline(root=root, push_to_remote=push_to_remote, overrides=picked["overrides"], origin=origin)
    _record_outcome(Path(root), result, summary)
    return {"sweep": result, "pipeline": summary}


def _record_outcome(root: Path, result: dict, summary: dict) -> None:
    """What the gate made of the picked trial, on the sweep's parent run."""
    from mlflow.tracking import MlflowClient

    from tasks.common import tracking

    tracking.use_store(root)
    promotion = summary["promotion"]
    outcome = f"v{promotion['version']} {'promoted' if promotion['promoted'] else 'not promoted'}: {promotion['reason']}"
    MlflowClient().set_tag(result["parent_run_id"], "sweep.pipeline", outcome[:4000])


def _headline(result: dict) -> str:
    states = ", ".join(f"{n} {s}" for s, n in sorted(result["states"].items()))
    picked = result["picked"]
    return (f"sweep {result['name']}: {states} in {result['seconds']:.0f} s; "
            + (f"picked trial {picked['trial']}" if picked else "no feasible trial"))


def render(result: dict) -> str:
    """The sweep's report (Prefect artifact, and the end-of-run summary): the front and the pick."""
    objectives = result["objectives"]
    lines = [f"# Sweep {result['name']}", "", _headline(result), "",
             f"- folder: `{result['folder']}` (trials.json, front.png, summary.json, the study's journal)",
             f"- MLflow: parent run `{result['parent_run_id']}` in the sweep experiment, one child run per trial",
             f"- data version (prepared splits): `{result['data_digest'][:12]}`"]
    if result["requeued"]:
        lines.append(f"- re-queued (their sweep or worker died while they ran): {result['requeued']}")
    front = sorted((r for r in result["rows"] if r["on_front"]), key=lambda r: -r["accuracy"])
    lines += ["", "| trial | " + " | ".join(objectives) + " | shipped | overrides |",
              "|---|" + "---|" * (len(objectives) + 2)]
    lines += [f"| {r['trial']}{' (picked)' if result['picked'] and r['trial'] == result['picked']['trial'] else ''} | "
              + " | ".join(f"{r[o]:.4g}" for o in objectives) + f" | {r['shipped'] or '-'} | `{json.dumps(r['overrides'])}` |"
              for r in front]
    return "\n".join(lines) + "\n"
