"""The pipeline as a Prefect flow: each dvc.yaml stage a task, run in DAG order; data pushed to the DVC remote."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.dag import StageRun, push_data, repro_stage, stage_order


@task(name="stage", task_run_name="{stage}")
def run_stage(root: str, stage: str) -> StageRun:
    """One dvc.yaml stage, skipped by DVC when its deps, params and outs are unchanged."""
    from prefect.runtime import flow_run

    # The stage records this id as a lineage tag on the MLflow run (tasks/tracking.py).
    result = repro_stage(Path(root), stage, {"PIPELINE_FLOW_RUN_ID": str(flow_run.id)})
    get_run_logger().info("%s: %s in %.1f s", stage, "ran" if result.executed else "up to date", result.seconds)
    return result


@task(name="push data versions")
def push(root: str) -> None:
    push_data(Path(root))


@flow(name="digits-pipeline", log_prints=True)
def pipeline(root: str = ".", push_to_remote: bool = True) -> dict:
    """Run every stage of dvc.yaml in order; a failing stage fails the flow run and nothing after it runs."""
    root_path = Path(root).resolve()
    runs = [run_stage(str(root_path), stage) for stage in stage_order(root_path)]
    if push_to_remote:
        push(str(root_path))
    return summarize(root_path, runs)


def summarize(root: Path, runs: list[StageRun]) -> dict:
    """The figures a user wants after a run, read from the stage outputs."""
    artifacts = root / "artifacts"
    read = lambda rel: json.loads((artifacts / rel).read_text())  # noqa: E731
    variants = read("compress/variants.json")
    chosen = read("compress/choice.json")["variant"]
    return {
        "executed": [r.stage for r in runs if r.executed],
        "skipped": [r.stage for r in runs if not r.executed],
        "test_accuracy": read("evaluate/metrics.json")["accuracy"],
        "promotion": read("evaluate/promotion.json"),
        "compressed": {"variant": chosen, "fp32": variants["fp32-torch"], "chosen": variants[chosen]},
        "bento": read("package/bento.json"),
    }


def render(summary: dict) -> str:
    fp32, chosen = summary["compressed"]["fp32"], summary["compressed"]["chosen"]
    promotion = summary["promotion"]
    return "\n".join([
        "",
        "Pipeline finished",
        f"  stages run:      {', '.join(summary['executed']) or 'none (everything up to date)'}",
        f"  test accuracy:   {summary['test_accuracy']:.4f}",
        f"  model version:   {promotion['version']} ({'champion' if promotion['promoted'] else 'challenger'}: {promotion['reason']})",
        f"  compressed:      {summary['compressed']['variant']}: {chosen['size_bytes'] / 1024:.0f} KB vs {fp32['size_bytes'] / 1024:.0f} KB fp32; "
        f"latency b1 {chosen['latency_b1_ms']:.3f} ms vs {fp32['latency_b1_ms']:.3f} ms, "
        f"b64 {chosen['latency_b64_ms']:.3f} ms vs {fp32['latency_b64_ms']:.3f} ms; accuracy {chosen['accuracy']:.4f}",
        f"  bento:           {summary['bento']['bento_tag']}",
        "",
        "Next:",
        "  MLflow UI:   make ui            (mlflow ui --backend-store-uri sqlite:///mlflow.db, then http://127.0.0.1:5000)",
        f"  serve:       bentoml serve {summary['bento']['bento_tag']} --port 3000",
        "  predict:     POST http://127.0.0.1:3000/predict with {\"images\": N×8×8 values in 0..16} (README: Serving)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole pipeline as a Prefect flow.")
    parser.add_argument("--root", default=".", help="project root (default: current directory)")
    parser.add_argument("--no-push", action="store_true", help="do not push data versions to the DVC remote")
    args = parser.parse_args(argv)
    summary = pipeline(root=args.root, push_to_remote=not args.no_push)
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
