"""The drift check as a Prefect flow: served inputs against the training data, and retraining when they moved.

`mlops drift --url URL [--retrain]` runs it once; `mlops schedule --drift-url URL`
schedules it beside the nightly pipeline, and prefect.yaml declares it for a work pool. Above
`drift.max_shift` it starts the pipeline flow: through a deployment when one is named (the run goes to that
deployment's worker), else as a subflow here.
"""

from __future__ import annotations

from prefect import flow, get_run_logger


@flow(name="drift-check", log_prints=True)
def drift_check(url: str = "http://127.0.0.1:3000", root: str = ".", retrain: bool = False,
                retrain_deployment: str | None = None) -> dict:
    """Report drift of the service at `url`; with `retrain`, start the pipeline when it drifted."""
    from prefect.artifacts import create_markdown_artifact

    from jobs.drift import check_configured, render

    report = check_configured(url, root)
    get_run_logger().info(report["verdict"])
    if report["drifted"] and retrain:
        report["retraining"] = _start_retraining(root, retrain_deployment)
    create_markdown_artifact(key="drift-report", markdown="# Drift check\n\n```\n" + render(report) + "\n```\n\n"
                             f"retraining: {report.get('retraining', 'not started')}",
                             description=report["verdict"])
    return report


def _start_retraining(root: str, deployment: str | None) -> str:
    """The pipeline run started: by its deployment (not waited for), or as a subflow of this run."""
    if deployment:
        from prefect.deployments import run_deployment

        started = run_deployment(deployment, timeout=0)
        return f"flow run {started.id} of deployment {deployment}"
    from flows.pipeline import pipeline

    summary = pipeline(root=root, push_to_remote=True)
    return f"pipeline ran as a subflow: stages run: {', '.join(summary['executed']) or 'none (everything up to date)'}"
